"""Map domain errors to HTTP once, by class, with Mailgun's {"message": ...} body.

Every package's errors derive from EnvoiError, which carries its HTTP status: one handler renders
them all (falcon picks the handler of the nearest class in the error's MRO)."""

from __future__ import annotations

import logging

import falcon

from envoi.infra.errors import EnvoiError, ServiceUnavailable

log = logging.getLogger(__name__)
UNAVAILABLE = ServiceUnavailable.message


class ApiError(falcon.HTTPError):
    """An HTTP error whose body is exactly Mailgun's {"message": ...}."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(falcon.code_to_http_status(status), headers=headers)
        self.message = message

    def to_dict(self, obj_type=dict):
        return obj_type(message=self.message)


def unauthorized(message: str = "Forbidden") -> ApiError:
    """401 with a Basic challenge; the body says "Forbidden" as Mailgun's does."""
    return ApiError(401, message, headers={"WWW-Authenticate": 'Basic realm="MG API"'})


def serialize_error(req: falcon.Request, resp: falcon.Response, exception: falcon.HTTPError) -> None:
    render_page = getattr(req.context, "render_error", None)  # the dashboard's errors are HTML pages
    if render_page is not None:
        render_page(req, resp, exception)
        return
    message = getattr(exception, "message", None) or exception.description or exception.title
    resp.media = {"message": message}
    resp.content_type = falcon.MEDIA_JSON


def http_error(req: falcon.Request, ex: EnvoiError) -> ApiError:
    """The reply for a domain error: its class's status, its message, Retry-After if it says."""
    if ex.logged:  # an outage, or a value no parameter reader checked before the database refused it
        log.warning("%s %s: %s: %s", req.method, req.path, type(ex).__name__, ex)
    headers = {"Retry-After": str(ex.retry_after)} if ex.retry_after is not None else None
    return ApiError(ex.http_status, ex.message, headers=headers)


def _handle(req, resp, ex: EnvoiError, params):
    raise http_error(req, ex)


def install(app: falcon.App) -> None:
    app.set_error_serializer(serialize_error)
    app.add_error_handler(EnvoiError, _handle)
