"""Stats and tags: /v3/{domain}/stats/total and /v3/{domain}/tags (Mailgun shapes)."""

from __future__ import annotations

import falcon

from envoi.api.errors import ApiError
from envoi.api.forms import read_form
from envoi.api.scope import DomainScoped, query_params


class StatsTotal(DomainScoped):
    def __init__(self, accounts, stats):
        super().__init__(accounts)
        self.stats = stats

    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        resp.media = self.stats.total(self.domain(req, domain), query_params(req))


class AccountStatsTotal:
    """GET /v3/stats/total: Mailgun's account-level totals (every domain of the caller's account)."""

    def __init__(self, stats):
        self.stats = stats

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.stats.account_total(req.context.principal.account_id, query_params(req))


class Tags(DomainScoped):
    def __init__(self, accounts, stats, public_url: str):
        super().__init__(accounts)
        self.stats = stats
        self.public_url = public_url

    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        row = self.domain(req, domain)
        resp.media = self.stats.list_tags(row, query_params(req), f"{self.public_url}/v3/{row['name']}/tags")

    def on_get_item(self, req: falcon.Request, resp: falcon.Response, domain: str, tag: str) -> None:
        found = self.stats.get_tag(self.domain(req, domain), tag)
        if found is None:
            raise ApiError(404, "tag not found")
        resp.media = found

    def on_put_item(self, req: falcon.Request, resp: falcon.Response, domain: str, tag: str) -> None:
        fields, _ = read_form(req)
        description = (fields.get("description") or [""])[-1]
        if not self.stats.describe_tag(self.domain(req, domain), tag, description):
            raise ApiError(404, "tag not found")
        resp.media = {"message": "Tag updated"}

    def on_delete_item(self, req: falcon.Request, resp: falcon.Response, domain: str, tag: str) -> None:
        if not self.stats.delete_tag(self.domain(req, domain), tag):
            raise ApiError(404, "tag not found")
        resp.media = {"message": "Tag deleted"}

    def on_get_stats(self, req: falcon.Request, resp: falcon.Response, domain: str, tag: str) -> None:
        row = self.domain(req, domain)
        if self.stats.get_tag(row, tag) is None:
            raise ApiError(404, "tag not found")
        result = self.stats.total(row, query_params(req), tag=tag)
        resp.media = dict(result, tag=tag)
