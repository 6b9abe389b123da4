"""Errors of the privacy package, mapped to HTTP once in envoi/api/errors.py (by http_status)."""

from __future__ import annotations

from envoi.infra.errors import EnvoiError


class ArchiveInvalid(EnvoiError):
    """The file is not a complete archive this region can restore (the message says why); nothing was
    restored."""

    http_status = 400
