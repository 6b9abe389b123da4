"""Errors of the mta package: intake's refusals (the message was not accepted and nothing was stored)
and bad tracking settings. The edges render them by class (see envoi.infra.errors)."""

from envoi.infra.errors import EnvoiError


class IntakeError(EnvoiError):
    """Base class of the mta package's errors."""

    http_status = 400
    smtp_code, smtp_enhanced = 550, "5.6.0"


class InvalidMessage(IntakeError):
    http_status = 400
    smtp_code, smtp_enhanced = 550, "5.6.0"


class InvalidRecipient(IntakeError):
    http_status = 400
    smtp_code, smtp_enhanced = 553, "5.1.3"


class DomainNotFound(IntakeError):
    http_status = 404
    smtp_code, smtp_enhanced = 550, "5.7.1"


class NotAllowed(IntakeError):
    http_status = 403
    smtp_code, smtp_enhanced = 550, "5.7.1"


class MessageTooLarge(IntakeError):
    http_status = 413
    smtp_code, smtp_enhanced = 552, "5.3.4"


class TrackingSettingsError(EnvoiError):
    """Bad input to the tracking settings API."""

    http_status = 400


class MessageNotFound(IntakeError):
    """No stored message with that storage key in this domain (or its body is past retention)."""

    http_status = 404
    smtp_code, smtp_enhanced = 550, "5.7.1"
    message = "Message not found"


class NotCancellable(IntakeError):
    """Nothing of the message is waiting any more: every recipient was delivered, failed, or is being
    delivered by a relay right now."""

    http_status = 409
    smtp_code, smtp_enhanced = 550, "5.7.1"


class InvalidRoute(IntakeError):
    """A route's expression, action, priority or paging is not one Mailgun allows (nothing changed)."""

    http_status = 400


class RouteNotFound(IntakeError):
    http_status = 404
    message = "Route not found"
