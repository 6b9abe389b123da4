"""Errors raised by intake; the HTTP edge maps them to Mailgun's statuses, SMTP to reply codes."""


class IntakeError(Exception):
    """Base class: the message was not accepted and nothing was stored."""

    http_status = 400
    smtp_reply = "550 5.6.0"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidMessage(IntakeError):
    http_status = 400
    smtp_reply = "550 5.6.0"


class InvalidRecipient(IntakeError):
    http_status = 400
    smtp_reply = "553 5.1.3"


class DomainNotFound(IntakeError):
    http_status = 404
    smtp_reply = "550 5.7.1"


class NotAllowed(IntakeError):
    http_status = 403
    smtp_reply = "550 5.7.1"


class MessageTooLarge(IntakeError):
    http_status = 413
    smtp_reply = "552 5.3.4"
