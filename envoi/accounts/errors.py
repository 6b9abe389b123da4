"""Errors of the accounts package; the HTTP and SMTP edges translate them once."""


class AccountsError(Exception):
    """Base class."""


class NotFound(AccountsError):
    pass


class AlreadyExists(AccountsError):
    pass


class InvalidInput(AccountsError):
    pass
