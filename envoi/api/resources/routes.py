"""/v3/routes: the account's inbound routes (Mailgun's Routes API)."""

from __future__ import annotations

from envoi.api.errors import ApiError
from envoi.api.forms import read_form


def _last(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[-1] if values else None


def _account(req) -> int:
    account_id = req.context.principal.account_id
    if account_id is None:
        raise ApiError(400, "routes belong to an account: use an account's API key")
    return account_id


class RouteCollection:
    def __init__(self, routes):
        self.routes = routes

    def on_get(self, req, resp) -> None:
        resp.media = self.routes.list(_account(req), req.get_param("skip"), req.get_param("limit"))

    def on_post(self, req, resp) -> None:
        account_id = _account(req)
        fields, _ = read_form(req)
        resp.media = self.routes.create(account_id, priority=_last(fields, "priority"),
                                        description=_last(fields, "description"),
                                        expression=_last(fields, "expression"), actions=fields.get("action", []))

    def on_get_item(self, req, resp, route_id: str) -> None:
        resp.media = self.routes.get(_account(req), route_id)

    def on_put_item(self, req, resp, route_id: str) -> None:
        account_id = _account(req)
        fields, _ = read_form(req)
        resp.media = self.routes.update(account_id, route_id, priority=_last(fields, "priority"),
                                        description=_last(fields, "description"),
                                        expression=_last(fields, "expression"), actions=fields.get("action", []))

    def on_delete_item(self, req, resp, route_id: str) -> None:
        resp.media = self.routes.delete(_account(req), route_id)
