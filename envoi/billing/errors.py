"""Errors of the billing package; the HTTP and SMTP edges render them by class (see envoi.infra.errors)."""

from envoi.infra.errors import EnvoiError


class BillingError(EnvoiError):
    """Base class."""


class PlansInvalid(BillingError):
    """The plans file cannot be used (a setting error: the process refuses to start)."""
    http_status = 500
    smtp_code, smtp_enhanced = 451, "4.3.0"  # the server's fault: the client may try again
    logged = True


class QuotaExceeded(BillingError):
    """The account's plan caps its messages (recipients) a UTC day: nothing of the message was accepted.
    Mailgun answers a recipient limit with HTTP 420 and "…is not allowed to send: recipient limit
    exceeded, try again after <date>"; over SMTP a temporary refusal: the cap lifts at midnight UTC."""
    http_status = 420
    smtp_code, smtp_enhanced = 451, "4.7.1"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after  # seconds until the cap resets (the API's Retry-After)


class MonthlyQuotaExceeded(QuotaExceeded):
    """The plan's monthly hard cap: permanent for an SMTP client's queue (the reset may be weeks away)."""
    smtp_code, smtp_enhanced = 550, "5.7.1"
