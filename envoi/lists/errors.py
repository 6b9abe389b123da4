"""Errors of the mailing lists package; the edges render them by class (see envoi.infra.errors)."""

from envoi.infra.errors import EnvoiError


class ListsError(EnvoiError):
    """Base class."""


class ListNotFound(ListsError):
    http_status = 404
    smtp_code = 550
    smtp_enhanced = "5.1.1"


class MemberNotFound(ListsError):
    http_status = 404


class AlreadyExists(ListsError):
    http_status = 400


class InvalidInput(ListsError):
    http_status = 400
