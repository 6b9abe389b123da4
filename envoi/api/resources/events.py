"""GET /v3/{domain}/events and its paging URLs."""

from __future__ import annotations

import falcon


class DomainScoped:
    """Resolves {domain} within the caller's account; another tenant's domain is a 404."""

    def __init__(self, accounts):
        self.accounts = accounts

    def domain(self, req: falcon.Request, name: str) -> dict:
        return self.accounts.get_domain(name, req.context.principal.account_id)


class EventList(DomainScoped):
    def __init__(self, accounts, events):
        super().__init__(accounts)
        self.events = events

    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        params = {}
        for key in req.params:
            value = req.get_param_as_list(key) or []
            params[key] = value
        resp.media = self.events.search(self.domain(req, domain), params)

    def on_get_page(self, req: falcon.Request, resp: falcon.Response, domain: str, token: str) -> None:
        resp.media = self.events.page(self.domain(req, domain), token)
