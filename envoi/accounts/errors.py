"""Errors of the accounts package; the HTTP and SMTP edges render them by class (see envoi.infra.errors)."""

from envoi.infra.errors import EnvoiError


class AccountsError(EnvoiError):
    """Base class."""


class NotFound(AccountsError):
    http_status = 404
    smtp_code, smtp_enhanced = 550, "5.7.1"


class AlreadyExists(AccountsError):
    http_status = 400


class InvalidInput(AccountsError):
    http_status = 400
