"""Errors of the webhooks package; the edges render them by class (see envoi.infra.errors)."""

from envoi.infra.errors import EnvoiError


class WebhooksError(EnvoiError):
    """Base class."""


class NotFound(WebhooksError):
    http_status = 404


class InvalidInput(WebhooksError):
    http_status = 400


class Conflict(WebhooksError):
    """Mailgun's 409 for a fourth URL on an event type of the account-level webhooks."""

    http_status = 409
