"""Webhooks: v3 per event type, v4 URL-centric, the account signing key, and delivery attempts."""

from __future__ import annotations

from envoi.api.errors import ApiError
from envoi.api.forms import read_form
from envoi.api.scope import DomainScoped


def _urls(fields: dict[str, list[str]]) -> list[str]:
    return [u for u in fields.get("url", []) if u.strip()]


class WebhooksV3(DomainScoped):
    def __init__(self, accounts, webhooks):
        super().__init__(accounts)
        self.webhooks = webhooks

    def on_get(self, req, resp, domain: str) -> None:
        resp.media = self.webhooks.all(self.domain(req, domain))

    def on_post(self, req, resp, domain: str) -> None:
        row = self.domain(req, domain)
        fields, _ = read_form(req)
        name = (fields.get("id") or [""])[-1]
        if not name:
            raise ApiError(400, "id parameter is missing")
        resp.media = self.webhooks.create(row, name, _urls(fields))

    def on_get_item(self, req, resp, domain: str, name: str) -> None:
        resp.media = self.webhooks.get(self.domain(req, domain), name)

    def on_put_item(self, req, resp, domain: str, name: str) -> None:
        row = self.domain(req, domain)
        fields, _ = read_form(req)
        resp.media = self.webhooks.update(row, name, _urls(fields))

    def on_delete_item(self, req, resp, domain: str, name: str) -> None:
        resp.media = self.webhooks.delete(self.domain(req, domain), name)

    # GET /v3/domains/{d}/webhooks/{name}/attempts and /v3/domains/{d}/webhooks/attempts
    def on_get_attempts(self, req, resp, domain: str, name: str | None = None) -> None:
        params = {k: req.get_param(k) for k in ("limit", "before", "url") if req.get_param(k)}
        resp.media = self.webhooks.attempts(self.domain(req, domain), name, params)


class WebhooksV4(DomainScoped):
    def __init__(self, accounts, webhooks):
        super().__init__(accounts)
        self.webhooks = webhooks

    def on_get(self, req, resp, domain: str) -> None:
        resp.media = self.webhooks.all(self.domain(req, domain))

    def _add(self, req, resp, domain: str, replace: bool) -> None:
        row = self.domain(req, domain)
        fields, _ = read_form(req)
        url = (fields.get("url") or [""])[-1]
        types = [t for v in fields.get("event_types", []) for t in v.split(",")]
        resp.media = self.webhooks.v4_add(row, url, types, replace=replace)

    def on_post(self, req, resp, domain: str) -> None:
        self._add(req, resp, domain, replace=False)

    def on_put(self, req, resp, domain: str) -> None:
        self._add(req, resp, domain, replace=True)

    def on_delete(self, req, resp, domain: str) -> None:
        row = self.domain(req, domain)
        raw = req.get_param("url") or ""
        resp.media = self.webhooks.v4_delete(row, raw.split(","))


class SigningKey:
    def __init__(self, webhooks):
        self.webhooks = webhooks

    def on_get(self, req, resp) -> None:
        key = self.webhooks.signing_key(req.context.principal.account_id)
        resp.media = {"message": "success", "http_signing_key": key}

    def on_post(self, req, resp) -> None:
        key = self.webhooks.regenerate_signing_key(req.context.principal.account_id)
        resp.media = {"message": "success", "http_signing_key": key}


def _ids(raw: str | None) -> list[str] | None:
    """webhook_ids=a,b as a list (None when absent); an empty item is Mailgun's 400."""
    if raw is None:
        return None
    ids = [i.strip() for i in raw.split(",")]
    if not all(ids):
        raise ApiError(400, "Invalid parameter: webhook_ids malformed webhook_ids parameter: empty values not allowed")
    return ids


class AccountWebhooks:
    """Mailgun's account-level webhooks, /v1/webhooks: each one URL for some event types, fired for every
    domain of the caller's account."""

    def __init__(self, webhooks):
        self.webhooks = webhooks

    @staticmethod
    def _fields(req) -> tuple[str, list[str], str]:
        fields, _ = read_form(req)
        types = [t for v in fields.get("event_types", []) for t in v.split(",")]
        return (fields.get("url") or [""])[-1], types, (fields.get("description") or [""])[-1]

    def on_get(self, req, resp) -> None:
        ids = _ids(req.get_param("webhook_ids"))
        resp.media = self.webhooks.account_list(req.context.principal.account_id, ids)

    def on_post(self, req, resp) -> None:
        url, types, description = self._fields(req)
        resp.media = self.webhooks.account_create(req.context.principal.account_id, url, types, description)

    def on_delete(self, req, resp) -> None:
        ids = _ids(req.get_param("webhook_ids"))
        if ids is None and not req.get_param_as_bool("all", default=False):
            raise ApiError(400, "Invalid parameter: give webhook_ids, or all=true to delete every account webhook")
        self.webhooks.account_delete(req.context.principal.account_id, ids)
        resp.status = 204

    def on_get_item(self, req, resp, webhook_id: str) -> None:
        resp.media = self.webhooks.account_get(req.context.principal.account_id, webhook_id)

    def on_put_item(self, req, resp, webhook_id: str) -> None:
        url, types, description = self._fields(req)
        self.webhooks.account_update(req.context.principal.account_id, webhook_id, url, types, description)
        resp.status = 204

    def on_delete_item(self, req, resp, webhook_id: str) -> None:
        self.webhooks.account_delete(req.context.principal.account_id, [webhook_id])
        resp.status = 204
