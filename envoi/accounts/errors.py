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


class Forbidden(AccountsError):
    """The caller is known but their role does not allow the action."""

    http_status = 403


class InvalidLogin(AccountsError):
    """Wrong email, password or code: the same words whichever it was, so nobody learns which emails exist."""

    http_status = 401
    message = "Invalid email, password or code"


class SecondFactorRequired(AccountsError):
    http_status = 401
    message = "A one-time code (or a recovery code) is required"


class LoginThrottled(AccountsError):
    """Too many failed logins for this email or from this address; said the same way for unknown emails."""

    http_status = 429
    retry_after = 900
    message = "Too many failed logins; try again later"


class InvitationInvalid(AccountsError):
    http_status = 400
    message = "This invitation is unknown, used or expired"


class AccountSuspended(AccountsError):
    """The account may not send: an operator (or billing) suspended it. Its keys still read, its users
    still sign in (to see why). 403 as Mailgun refuses a disabled domain ("Domain X is not allowed to
    send: ..."); over SMTP 550 5.7.1 (RFC 3463: delivery not authorized, message refused)."""

    http_status = 403
    smtp_code, smtp_enhanced = 550, "5.7.1"
    account_state = "suspended"  # what the refusal tells a caller holding an older state


class AccountRestricted(AccountsError):
    """Processing of the account's data is restricted at its owner's request (GDPR Art. 18): nothing is
    sent, accepted or tracked until an operator lifts it; the data is kept and can be exported. Same
    403 / 550 5.7.1 shapes as a suspension."""

    http_status = 403
    smtp_code, smtp_enhanced = 550, "5.7.1"
    account_state = "restricted"


class AccountClosed(AccountsError):
    """The account was closed (deleted by its customer): nothing it holds works any more. Its API keys
    are simply unknown (401); this is what a dashboard login or an SMTP session opened before the
    closing is told."""

    http_status = 403
    smtp_code, smtp_enhanced = 550, "5.7.1"
    message = "This account is closed"
    account_state = "closed"


class AccountDisabled(AccountsError):
    """A subaccount its parent disabled (/v5/accounts/subaccounts/{id}/disable): it may not send until
    enabled again; everything else works. Same 403 / 550 5.7.1 shapes as a suspension."""

    http_status = 403
    smtp_code, smtp_enhanced = 550, "5.7.1"
    account_state = "disabled"


class PlanLimitReached(AccountsError):
    """One more domain, user or dedicated IP than the account's plan allows (billing on). Mailgun answers
    a feature its plan lacks with 403 and a {"message": ...} saying so; the message names the limit and
    the plan. Nothing was changed."""

    http_status = 403


class RoutingRequestInvalid(AccountsError):
    """A region lookup whose signature, age or body is wrong (or this region answers none)."""

    http_status = 401
    message = "Invalid region lookup"
