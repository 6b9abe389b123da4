"""Map domain errors to HTTP once, with Mailgun's {"message": ...} body."""

from __future__ import annotations

import logging

import falcon

from envoi.accounts.errors import AlreadyExists, InvalidInput, NotFound
from envoi.events.service import EventQueryError
from envoi.infra.db import DatabaseUnavailable, DataError
from envoi.infra.group_commit import CommitTimeout
from envoi.mta.errors import IntakeError

log = logging.getLogger(__name__)
UNAVAILABLE = "Service temporarily unavailable: the database is not answering, please retry later"


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
    message = getattr(exception, "message", None) or exception.description or exception.title
    resp.media = {"message": message}
    resp.content_type = falcon.MEDIA_JSON


def _handle(status: int):
    def handler(req, resp, ex, params):
        raise ApiError(status, getattr(ex, "message", None) or str(ex))

    return handler


def _intake(req, resp, ex: IntakeError, params):
    raise ApiError(ex.http_status, ex.message)


def _unavailable(req, resp, ex, params):
    # Postgres restarting, unreachable or stuck: the client may retry (Mailgun's SDKs retry 503s).
    log.warning("%s %s: database unavailable: %s", req.method, req.path, ex)
    raise ApiError(503, UNAVAILABLE, headers={"Retry-After": "5"})


def _data(req, resp, ex: DataError, params):
    # A value from the request that no parameter reader caught (params.py and the readers check them
    # first): the database refused it, so it is the request's fault. Logged so the missing check is found.
    log.warning("database refused a value from %s %s: %s", req.method, req.path, ex)
    raise ApiError(400, "a parameter value is invalid or out of range")


def install(app: falcon.App) -> None:
    app.set_error_serializer(serialize_error)
    app.add_error_handler((DatabaseUnavailable, CommitTimeout), _unavailable)
    app.add_error_handler(IntakeError, _intake)
    app.add_error_handler(NotFound, _handle(404))
    app.add_error_handler(InvalidInput, _handle(400))
    app.add_error_handler(AlreadyExists, _handle(400))
    app.add_error_handler(EventQueryError, _handle(400))
    app.add_error_handler(DataError, _data)
