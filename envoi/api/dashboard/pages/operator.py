"""Operator pages (platform admins, users with no account): the accounts list with suspend / reinstate.
The IP pages are in operator_ips.py, the queues in operator_queues.py. Every class here has
`audience = OPERATOR`: the gate answers 404 to anyone else, for GET and POST alike."""

from __future__ import annotations

import falcon

from envoi.api.auth import SESSION
from envoi.api.dashboard.gate import OPERATOR, PREFIX
from envoi.api.dashboard.pages.common import done_notice
from envoi.api.dashboard.templating import render
from envoi.infra.errors import EnvoiError

PAGE_SIZE = 100
DONE = {"suspended": "The account is suspended: it cannot send until it is reinstated.",
        "reinstated": "The account is reinstated: it can send again.",
        "restricted": "Processing of the account is restricted: nothing is sent, accepted or tracked; its data is kept.",
        "lifted": "The restriction is lifted: the account is active again."}


def actor(req: falcon.Request) -> str:
    """The audit actor of an operator's change, as envoi.accounts.users.actor_of names it."""
    return f"operator:{req.context.user.id}"


class OperatorAccounts:
    """/dashboard/operator: every account of the region with its domains and users."""
    auth, audience = SESSION, OPERATOR

    def __init__(self, accounts):
        self.accounts = accounts

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.show(req, resp)

    def show(self, req: falcon.Request, resp: falcon.Response, *, error: str | None = None, status: int = 200) -> None:
        page = req.get_param_as_int("page", min_value=1) or 1
        search = (req.get_param("q") or "").strip()[:200] or None
        total = self.accounts.count_accounts(search=search)
        rows = self.accounts.list_accounts(limit=PAGE_SIZE, skip=(page - 1) * PAGE_SIZE, search=search,
                                           newest_first=True)  # the accounts an operator looks at most
        render(req, resp, "operator_accounts.html", status=status, accounts=rows, total=total, page=page,
               pages=max(1, -(-total // PAGE_SIZE)), q=search or "",
               error=error, notice=done_notice(req, DONE))


class AccountState:
    """POST /dashboard/operator/accounts/{id}/suspend (with a reason) and .../reinstate; .../restrict (the
    customer's request, as the reason) and .../lift (docs/account-state.md)."""
    auth, audience = SESSION, OPERATOR

    def __init__(self, accounts, client_address):
        self.accounts = accounts
        self.client_address = client_address
        self.listing = OperatorAccounts(accounts)

    def on_post_suspend(self, req: falcon.Request, resp: falcon.Response, account_id: int) -> None:
        self._change(req, resp, "suspended", lambda: self.accounts.suspend(
            account_id, req.context.form.get("reason", ""), actor=actor(req), ip=self.client_address(req)))

    def on_post_reinstate(self, req: falcon.Request, resp: falcon.Response, account_id: int) -> None:
        self._change(req, resp, "reinstated", lambda: self.accounts.reinstate(
            account_id, actor=actor(req), ip=self.client_address(req)))

    def on_post_restrict(self, req: falcon.Request, resp: falcon.Response, account_id: int) -> None:
        self._change(req, resp, "restricted", lambda: self.accounts.restrict(
            account_id, req.context.form.get("reason", ""), actor=actor(req), ip=self.client_address(req)))

    def on_post_lift(self, req: falcon.Request, resp: falcon.Response, account_id: int) -> None:
        self._change(req, resp, "lifted", lambda: self.accounts.lift_restriction(
            account_id, actor=actor(req), ip=self.client_address(req)))

    def _change(self, req: falcon.Request, resp: falcon.Response, done: str, change) -> None:
        try:
            change()
        except EnvoiError as ex:
            if ex.http_status == 404:
                raise
            self.listing.show(req, resp, error=ex.message, status=ex.http_status)
            return
        raise falcon.HTTPSeeOther(f"{PREFIX}/operator?done={done}")
