"""API keys (Mailgun's /v1/keys): list, create (the secret is in that reply only), delete.

Only admin keys reach these (envoi/api/roles.py KEYS). Mailgun's `kind` is "domain" for a key scoped to
one domain and "user" otherwise; Envoi has no web (browser session) keys, so `kind=web` is refused."""

from __future__ import annotations

import falcon

from envoi.api import roles
from envoi.api.errors import ApiError
from envoi.api.forms import read_form

KINDS = ("domain", "user")
CREATABLE_ROLES = ("admin", "developer", "sending", "basic")


def _iso(dt) -> str | None:
    return dt.isoformat() if dt is not None else None


def key_json(row: dict) -> dict:
    """A key as Mailgun lists it: never its secret (Envoi keeps only a hash); `hint` is its last 4."""
    return {
        "id": row["id"],
        "description": row["description"],
        "kind": "domain" if row["domain_name"] else "user",
        "role": row["role"],
        "domain_name": row["domain_name"],
        "requestor": None,
        "user_name": None,
        "user_id": None,
        "is_disabled": row["is_disabled"],
        "expires_at": _iso(row["expires_at"]),
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["created_at"]),  # keys are never changed, only deleted
        "hint": row["hint"],
    }


class Keys:
    key_access = roles.KEYS

    def __init__(self, accounts, client_address):
        self.accounts = accounts
        self.client_address = client_address  # who did it, for the audit log

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        domain, kind = req.get_param("domain_name"), req.get_param("kind")
        if kind is not None and kind not in KINDS:
            raise ApiError(400, "kind must be domain or user")
        items = [key_json(r) for r in self.accounts.list_keys(req.context.principal.account_id)]
        items = [k for k in items if (domain is None or k["domain_name"] == domain.strip().lower())
                 and (kind is None or k["kind"] == kind)]
        resp.media = {"total_count": len(items), "items": items}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        fields = {name: values[-1] for name, values in read_form(req)[0].items()}
        role = fields.get("role", "")
        if role not in CREATABLE_ROLES:
            raise ApiError(400, f"role must be one of {', '.join(CREATABLE_ROLES)}")
        kind = fields.get("kind", "domain" if fields.get("domain_name") else "user")
        if kind not in KINDS:
            raise ApiError(400, "kind must be domain or user (Envoi has no web keys)")
        domain = fields.get("domain_name") or None
        if (kind == "domain") != (domain is not None):
            raise ApiError(400, "a domain key needs domain_name, and only a domain key takes one")
        expiration = fields.get("expiration") or None
        if expiration is not None and not expiration.isdigit():
            raise ApiError(400, "expiration must be a number of seconds")
        principal = req.context.principal
        row, secret = self.accounts.create_key(
            principal.account_id, role, domain, fields.get("description", ""),
            expires_in=None if expiration is None else int(expiration),
            actor=f"key:{principal.key_id}", ip=self.client_address(req))
        resp.media = {"message": "great success", "key": {**key_json(row), "secret": secret}}

    def on_delete_item(self, req: falcon.Request, resp: falcon.Response, key_id: str) -> None:
        principal = req.context.principal
        self.accounts.delete_key(principal.account_id, key_id, actor=f"key:{principal.key_id}",
                                 ip=self.client_address(req))
        resp.media = {"message": "key deleted"}
