"""Errors of the billing package; the HTTP and SMTP edges render them by class (see envoi.infra.errors)."""

from envoi.infra.errors import EnvoiError


class BillingError(EnvoiError):
    """Base class."""


class PlansInvalid(BillingError):
    """The plans file cannot be used (a setting error: the process refuses to start)."""
    http_status = 500
    logged = True
