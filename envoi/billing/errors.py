"""Errors of the billing package; the HTTP and SMTP edges render them by class (see envoi.infra.errors)."""

from envoi.infra.errors import EnvoiError


class BillingError(EnvoiError):
    """Base class."""


class PlansInvalid(BillingError):
    """The plans file cannot be used (a setting error: the process refuses to start)."""
    http_status = 500
    smtp_code, smtp_enhanced = 451, "4.3.0"  # the server's fault: the client may try again
    logged = True


class StripeFailed(BillingError):
    """Stripe refused or could not be reached; the message is Stripe's, without keys."""
    http_status = 502
    smtp_code, smtp_enhanced = 451, "4.3.0"  # not the client's fault: it may try again
    logged = True


class BadSignature(BillingError):
    """A webhook whose Stripe-Signature does not verify with the endpoint secret."""


class BillingInvalid(BillingError):
    """A billing request that cannot be done as asked (an unknown plan, a free plan to subscribe to)."""


class BillingNotFound(BillingError):
    http_status = 404


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
