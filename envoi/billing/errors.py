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
