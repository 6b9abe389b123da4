"""Delivery logs: the events API and its paging URLs, the live stream (SSE), message trace."""

from __future__ import annotations

import math

import falcon

from envoi.accounts.errors import NotFound
from envoi.api.errors import ApiError
from envoi.api.scope import DomainScoped, query_params
from envoi.events.service import check_parameter_names, compile_filters, matches, parse_filters

LIVE_OPTIONS = ("timeout", "last_event_id")


class EventList(DomainScoped):
    def __init__(self, accounts, events):
        super().__init__(accounts)
        self.events = events

    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.text = self.events.search_json(self.domain(req, domain), query_params(req))

    def on_get_page(self, req: falcon.Request, resp: falcon.Response, domain: str, token: str) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.text = self.events.page_json(self.domain(req, domain), token)


class LiveEvents(DomainScoped):
    """GET /v3/{domain}/events/live and GET /v3/events/live (every domain of the account) as SSE.

    Same filters as the events API; resumable with Last-Event-ID (header, or `last_event_id` in the
    query for clients that cannot set headers); `timeout` shortens the response (seconds, capped by
    the server's maximum); the client reconnects when it ends.
    """

    options = LIVE_OPTIONS  # parameters besides the events filters

    def __init__(self, accounts, stream):
        super().__init__(accounts)
        self.stream = stream
        self._names: dict[int, str] = {}

    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str | None = None) -> None:
        principal = req.context.principal
        domain_id = self.domain(req, domain)["id"] if domain is not None else None
        params = query_params(req)
        check_parameter_names(params, self.options)
        compiled = compile_filters(parse_filters(params))
        last_event_id = req.get_header("Last-Event-ID") or req.get_param("last_event_id") or None
        timeout = None
        if (value := req.get_param("timeout")) is not None:
            try:
                timeout = float(value)
            except ValueError as ex:
                raise ApiError(400, "timeout must be a number of seconds") from ex
            if not math.isfinite(timeout) or timeout <= 0:
                raise ApiError(400, "timeout must be a number of seconds")
        body = self.stream.open(
            principal.account_id, domain_id=domain_id, matches=lambda data: matches(compiled, data),
            last_event_id=last_event_id, max_seconds=timeout, decorate=self._with_domain if domain is None else None)
        resp.content_type = "text/event-stream"
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream
        resp.stream = body

    def _with_domain(self, domain_id: int, data: dict) -> dict:
        name = self._names.get(domain_id)
        if name is None:
            try:
                name = self._names[domain_id] = self.accounts.get_domain_by_id(domain_id)["name"]
            except NotFound:  # deleted since the event was recorded
                name = None
        return dict(data, domain={"name": name})


class MessageTrace(DomainScoped):
    """GET /v3/{domain}/messages/{message_id}/trace: every attempt for every recipient."""

    def __init__(self, accounts, events):
        super().__init__(accounts)
        self.events = events

    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str, message_id: str) -> None:
        trace = self.events.trace(self.domain(req, domain), message_id)
        if trace is None:
            raise ApiError(404, "Message not found")
        resp.media = trace
