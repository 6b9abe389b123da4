"""API keys: list, create (the secret is in that one response only), delete (revoked at once).
The same Accounts methods as /v1/keys (envoi/api/resources/keys.py), with the same roles and audit."""

from __future__ import annotations

import falcon

from envoi.accounts.errors import AccountsError
from envoi.accounts.users import actor_of
from envoi.api.auth import SESSION
from envoi.api.dashboard.gate import PREFIX
from envoi.api.dashboard.pages.common import domain_names, done_notice
from envoi.api.dashboard.templating import render
from envoi.api.resources.keys import CREATABLE_ROLES, key_json

ROLE_HELP = {
    "admin": "everything, including managing keys",
    "developer": "everything but managing keys",
    "basic": "read-only: logs, events, stats, suppressions, domains",
    "sending": "sending messages only (needs a domain)",
}
DONE = {"deleted": "The key is deleted: it no longer authenticates."}
MAX_DESCRIPTION = 200


def page_actor(req: falcon.Request) -> str:
    """The audit actor of the signed-in person (user:<id>, operator:<id>)."""
    user = req.context.user
    return actor_of({"id": user.id, "account_id": user.account_id})


class ApiKeys:
    """/dashboard/keys: GET lists, POST creates."""
    auth, reads, writes = SESSION, "manage_keys", "manage_keys"

    def __init__(self, accounts, client_address):
        self.accounts = accounts
        self.client_address = client_address

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._page(req, resp, notice=done_notice(req, DONE))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = req.context.form
        role, domain = form.get("role", ""), (form.get("domain") or "").strip() or None
        description = (form.get("description") or "").strip()
        error = None
        if role not in CREATABLE_ROLES:
            error = f"Role must be one of {', '.join(CREATABLE_ROLES)}"
        elif role == "admin" and req.context.user.role != "admin":
            # An admin key reads the audit log and makes more admin keys: no way around the user's role.
            error = "Only an account admin may create admin keys"
        elif len(description) > MAX_DESCRIPTION:
            error = f"The description may have at most {MAX_DESCRIPTION} characters"
        elif domain is not None and domain not in domain_names(self.accounts, req):
            error = "Pick one of the account's domains"
        if error is None:
            try:
                row, secret = self.accounts.create_key(req.context.user.account_id, role, domain, description,
                                                       actor=page_actor(req), ip=self.client_address(req))
            except AccountsError as ex:
                error = ex.message
        if error is not None:
            self._page(req, resp, status=400, error=error, form=form)
            return
        # The secret is in this response only (status 200, never in a URL): Envoi keeps just its hash.
        self._page(req, resp, created={**key_json(row), "secret": secret})

    def _page(self, req, resp, *, status: int = 200, error: str | None = None, form: dict | None = None,
              created: dict | None = None, notice: str = "") -> None:
        keys = [key_json(r) for r in self.accounts.list_keys(req.context.user.account_id)]
        creatable = [r for r in CREATABLE_ROLES if r != "admin" or req.context.user.role == "admin"]
        render(req, resp, "keys.html", status=status, keys=keys, roles=creatable, role_help=ROLE_HELP,
               domains=domain_names(self.accounts, req), error=error, form=form or {}, created=created,
               notice=notice)


class ApiKey:
    """/dashboard/keys/{key_id}/delete: revoke at once (another account's key is a 404)."""
    auth, reads, writes = SESSION, "manage_keys", "manage_keys"

    def __init__(self, accounts, client_address):
        self.accounts = accounts
        self.client_address = client_address

    def on_post(self, req: falcon.Request, resp: falcon.Response, key_id: str) -> None:
        self.accounts.delete_key(req.context.user.account_id, key_id, actor=page_actor(req),
                                 ip=self.client_address(req))
        raise falcon.HTTPSeeOther(f"{PREFIX}/keys?done=deleted")
