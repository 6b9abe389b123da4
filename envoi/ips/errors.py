"""Errors of the IP feature; the edges render them by class (see envoi.infra.errors)."""

from __future__ import annotations

from envoi.infra.errors import EnvoiError


class IpError(EnvoiError):
    http_status = 400


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
