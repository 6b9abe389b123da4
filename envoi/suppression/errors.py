"""Errors of the suppression package; the edges render them by class (see envoi.infra.errors)."""

from envoi.infra.errors import EnvoiError


class SuppressionError(EnvoiError):
    """Base class."""


class NotFound(SuppressionError):
    http_status = 404


class InvalidInput(SuppressionError):
    http_status = 400
