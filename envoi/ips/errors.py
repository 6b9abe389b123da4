"""Errors of the IP feature; the edges render them by class (see envoi.infra.errors)."""

from __future__ import annotations

from envoi.infra.errors import EnvoiError


class IpError(EnvoiError):
    http_status = 400

    def __init__(self, message: str):
        super().__init__(message)


class InvalidInput(IpError):
    http_status = 400


class NotFound(IpError):
    http_status = 404


class Conflict(IpError):
    """The change clashes with another account's ownership or an existing assignment."""

    http_status = 400


class IpNotAllowed(IpError):
    """The account may not send over this IP or pool (Mailgun's 403 at accept time; 550 5.7.1 over SMTP)."""

    http_status = 403
    smtp_code, smtp_enhanced = 550, "5.7.1"


class NoEgressAvailable(Exception):  # noqa: N818 (named by the relay contract)
    """No egress IP may send this delivery now (warm-up caps, "wait" policy, or IPs on another host).

    The relay should put the delivery back (reschedule the recipients `retry_after` seconds later,
    without counting an attempt or recording a failure event) instead of sending it. A signal to
    the relay, never seen by a caller: not an EnvoiError.
    """

    def __init__(self, retry_after: float, reason: str = "no egress IP available"):
        super().__init__(f"{reason}; retry in {retry_after:.0f}s")
        self.retry_after = retry_after
        self.reason = reason
