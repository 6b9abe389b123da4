"""Mailgun's analytics APIs: /v1/analytics/metrics, /v1/analytics/usage/metrics, /v1/analytics/logs,
/v1/analytics/tags (+ /limits), /v3/stats/filter and the provider/device/country aggregates.
The v1 APIs take a JSON body (what the official SDKs send); errors are Mailgun's {"message": ...}."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import falcon

from envoi.api import roles
from envoi.api.errors import ApiError
from envoi.api.params import check_json
from envoi.api.scope import DomainScoped, query_params

MAX_BODY = 256 * 1024


def json_body(req: falcon.Request, *, form: bool = False) -> dict:
    """The request's JSON object ({} when empty). With `form`, an urlencoded body is read too (curl);
    mailgun.js sends its DELETE's JSON labelled as urlencoded, so a body that looks like JSON is JSON."""
    if (req.content_length or 0) > MAX_BODY:
        raise ApiError(413, "request body too large")
    raw = req.bounded_stream.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiError(413, "request body too large")
    if not raw.strip():
        return {}
    if form and not raw.lstrip().startswith(b"{") and (req.content_type or "").lower().startswith(
            "application/x-www-form-urlencoded"):
        try:
            fields = parse_qs(raw.decode(), keep_blank_values=True, strict_parsing=True)
        except (ValueError, UnicodeDecodeError) as ex:
            raise ApiError(400, "request body is not a valid form") from ex
        body = {k: v[-1] for k, v in fields.items()}
    else:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as ex:
            raise ApiError(400, "request body is not valid JSON") from ex
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    check_json(body)
    return body


def _account(req: falcon.Request) -> int:
    return req.context.principal.account_id


class Metrics:
    """POST /v1/analytics/metrics and POST /v1/analytics/usage/metrics."""

    key_access = roles.QUERY  # POST is a query (a basic key may); PUT/DELETE edit

    def __init__(self, analytics):
        self.analytics = analytics

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.analytics.metrics(_account(req), json_body(req))

    def on_post_usage(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.analytics.usage(_account(req), json_body(req))


class Logs:
    """POST /v1/analytics/logs."""

    key_access = roles.QUERY  # POST is a query (a basic key may); PUT/DELETE edit

    def __init__(self, logs):
        self.logs = logs

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.logs.search(_account(req), json_body(req))


class AccountTags:
    """/v1/analytics/tags: POST lists (or searches by prefix), PUT describes, DELETE deletes; /limits."""

    key_access = roles.QUERY  # POST is a query (a basic key may); PUT/DELETE edit

    def __init__(self, analytics):
        self.analytics = analytics

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.analytics.list_tags(_account(req), json_body(req))

    @staticmethod
    def _fields(req: falcon.Request) -> dict:
        """The SDKs send JSON; a form body or a `tag` query parameter (curl) is read too."""
        body = json_body(req, form=True)
        if "tag" not in body and req.get_param("tag"):
            body["tag"] = req.get_param("tag")
        return body

    @staticmethod
    def _tag(body: dict) -> str:
        tag = body.get("tag")
        if not isinstance(tag, str) or not tag.strip():
            raise ApiError(400, "tag is required")
        return tag

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = self._fields(req)
        tag, description = self._tag(body), body.get("description", "")
        if not isinstance(description, str):
            raise ApiError(400, "description must be a string")
        if not self.analytics.describe_tag(_account(req), tag, description):
            raise ApiError(404, "tag not found")
        resp.media = {"message": "Tag updated"}

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not self.analytics.delete_tag(_account(req), self._tag(self._fields(req))):
            raise ApiError(404, "tag not found")
        resp.media = {"message": "Tag deleted"}

    def on_get_limits(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.analytics.tag_limits(_account(req))


class StatsFilter:
    """GET /v3/stats/filter: the account's stat totals, filtered (filter=domain:…) and grouped (group=…)."""

    def __init__(self, analytics):
        self.analytics = analytics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.analytics.stats_filter(_account(req), query_params(req))


class Aggregates(DomainScoped):
    """GET /v3/{domain}/aggregates/{kind} and /v3/{domain}/tags/{tag}/stats/aggregates/{kind}."""

    def __init__(self, accounts, analytics, stats):
        super().__init__(accounts)
        self.analytics = analytics
        self.stats = stats

    def _kind(self, kind: str) -> str:
        if kind not in self.analytics.AGGREGATES:
            raise ApiError(404, f"unknown aggregate '{kind}': use providers, devices or countries")
        return kind

    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str, kind: str) -> None:
        resp.media = self.analytics.aggregates(self.domain(req, domain), self._kind(kind), query_params(req))

    def on_get_tag(self, req: falcon.Request, resp: falcon.Response, domain: str, tag: str, kind: str) -> None:
        row = self.domain(req, domain)
        self._kind(kind)
        if self.stats.get_tag(row, tag) is None:
            raise ApiError(404, "tag not found")
        resp.media = self.analytics.aggregates(row, kind, query_params(req), tag=tag)
