"""Errors of the billing package; the HTTP and SMTP edges render them by class (see envoi.infra.errors)."""

from envoi.infra.errors import EnvoiError


class BillingError(EnvoiError):
    """Base class."""


class PlansInvalid(BillingError):
    """The plans file cannot be used (a setting error: the process refuses to start)."""
    http_status = 500
    smtp_code, smtp_enhanced = 451, "4.3.0"  # the server's fault: the client may try again
    logged = True
