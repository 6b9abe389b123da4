"""Errors of the templates package; the edges render them by class (see envoi.infra.errors)."""

from envoi.infra.errors import EnvoiError


class TemplateError(EnvoiError):
    """Base class: bad input (400; over SMTP 550 5.6.0)."""

    http_status = 400
    smtp_code, smtp_enhanced = 550, "5.6.0"


class InvalidInput(TemplateError):
    http_status = 400


class NotFound(TemplateError):
    http_status = 404


class Conflict(TemplateError):
    http_status = 409


class RenderFailed(TemplateError):
    """A send's template could not be found or rendered: refused at accept, never at delivery."""

    http_status = 400
