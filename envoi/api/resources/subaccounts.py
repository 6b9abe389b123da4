"""Subaccounts (Mailgun's /v5/accounts/subaccounts) and custom monthly sending limits
(/v5/accounts/limit/custom/monthly, and a subaccount's at /v5/accounts/subaccounts/{id}/limit/...).

The caller is the parent; a parent's key acts *as* a subaccount with X-Mailgun-On-Behalf-Of instead
(envoi/api/auth.py), and a subaccount has no subaccounts, so these answer it 403."""

from __future__ import annotations

from envoi.api.forms import read_form


def _param(req, name: str) -> str | None:
    """A parameter from the query string (where Mailgun documents it) or the form body (where SDKs may
    put it)."""
    value = req.get_param(name)
    if value is None and req.method in ("POST", "PUT"):
        fields, _ = read_form(req)
        value = (fields.get(name) or [None])[-1]
    return value


def _who(req, client_address) -> dict:
    return {"actor": f"key:{req.context.principal.key_id}", "ip": client_address(req)}


class SubaccountCollection:
    def __init__(self, subaccounts, client_address):
        self.subaccounts = subaccounts
        self.client_address = client_address

    def on_get(self, req, resp) -> None:
        params = {k: req.get_param(k) for k in ("sort", "filter", "limit", "skip", "enabled", "closed")
                  if req.get_param(k) is not None}
        resp.media = self.subaccounts.list(req.context.principal.account_id, params)

    def on_post(self, req, resp) -> None:
        resp.media = self.subaccounts.create(req.context.principal.account_id, _param(req, "name") or "",
                                             **_who(req, self.client_address))

    def on_get_item(self, req, resp, subaccount_id: str) -> None:
        resp.media = self.subaccounts.get(req.context.principal.account_id, subaccount_id)

    def on_post_disable(self, req, resp, subaccount_id: str) -> None:
        resp.media = self.subaccounts.set_enabled(req.context.principal.account_id, subaccount_id, False,
                                                  **_who(req, self.client_address))

    def on_post_enable(self, req, resp, subaccount_id: str) -> None:
        resp.media = self.subaccounts.set_enabled(req.context.principal.account_id, subaccount_id, True,
                                                  **_who(req, self.client_address))


class MonthlyLimit:
    """GET {limit, current, period}, PUT ?limit=N, DELETE: the caller's own custom monthly limit, or (with
    {subaccount_id}) its subaccount's. `current` is what the quota counted this UTC month."""

    def __init__(self, subaccounts, quota, client_address):
        self.subaccounts = subaccounts
        self.quota = quota
        self.client_address = client_address

    def on_get(self, req, resp, subaccount_id: str | None = None) -> None:
        principal = req.context.principal
        account_id, limit = self.subaccounts.limit_of(principal.account_id, principal.account_id, subaccount_id)
        used = self.quota.used(account_id)
        resp.media = {"limit": limit, "current": used[1] if used else 0, "period": "1m"}

    def on_put(self, req, resp, subaccount_id: str | None = None) -> None:
        raw = _param(req, "limit")
        resp.media = self.subaccounts.set_limit(req.context.principal.account_id, "" if raw is None else raw,
                                                sub_id=subaccount_id, **_who(req, self.client_address))

    def on_delete(self, req, resp, subaccount_id: str | None = None) -> None:
        resp.media = self.subaccounts.set_limit(req.context.principal.account_id, None, sub_id=subaccount_id,
                                                **_who(req, self.client_address))
