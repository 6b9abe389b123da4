"""Webhooks: each domain's URLs per event type (set, change, delete), a signed test POST through the
delivery path (signing, SSRF guard, attempt record), the attempts log, and the account's HTTP signing key. The same service as
/v3/domains/{d}/webhooks and /v5/accounts/http_signing_key."""

from __future__ import annotations

from urllib.parse import urlencode

import falcon

from envoi.api.auth import SESSION
from envoi.api.dashboard.gate import PREFIX
from envoi.api.dashboard.pages.common import domain_names, done_notice
from envoi.api.dashboard.templating import render
from envoi.webhooks.errors import WebhooksError
from envoi.webhooks.service import EVENT_TYPES, MAX_URLS

ATTEMPTS_SHOWN = 50
DONE = {"saved": "The webhook was saved.", "deleted": "The webhook was deleted.",
        "key": "A new signing key was made: update your receivers to verify with it."}


class WebhooksPage:
    """/dashboard/webhooks?domain= and its actions (POST /dashboard/webhooks/{action})."""
    auth, reads, writes = SESSION, "manage_webhooks", "manage_webhooks"

    def __init__(self, accounts, webhooks):
        self.accounts = accounts
        self.webhooks = webhooks

    def _choice(self, req: falcon.Request, values: dict) -> tuple[list[str], dict | None]:
        names = domain_names(self.accounts, req)
        name = (values.get("domain") or "").strip() or (names[0] if names else "")
        return names, self.accounts.get_domain(name, req.context.user.account_id) if name else None

    def _render(self, req, resp, names, row, *, status: int = 200, error: str | None = None, notice: str = "",
                tested: dict | None = None) -> None:
        hooks, attempts = {}, []
        if row is not None:
            hooks = self.webhooks.all(row)["webhooks"]
            attempts = self.webhooks.attempts(row, None, {"limit": str(ATTEMPTS_SHOWN)})["items"]
        render(req, resp, "webhooks.html", status=status, domains=names, domain=row["name"] if row else "",
               event_types=EVENT_TYPES, hooks={t: hooks.get(t, {}).get("urls", []) for t in EVENT_TYPES},
               max_urls=MAX_URLS, attempts=attempts, signing_key=self.webhooks.signing_key(req.context.user.account_id),
               failing=self.webhooks.failing_endpoints(req.context.user.account_id),
               error=error, notice=notice or done_notice(req, DONE), tested=tested)

    def _back(self, row: dict, done: str) -> falcon.HTTPSeeOther:
        return falcon.HTTPSeeOther(f"{PREFIX}/webhooks?" + urlencode({"domain": row["name"], "done": done}))

    def _target(self, req: falcon.Request) -> tuple[list[str], dict, str]:
        names, row = self._choice(req, req.context.form)
        if row is None:
            raise falcon.HTTPSeeOther(f"{PREFIX}/webhooks")
        return names, row, req.context.form.get("name", "")

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        names, row = self._choice(req, req.params)
        self._render(req, resp, names, row)

    def on_post_set(self, req: falcon.Request, resp: falcon.Response) -> None:
        """The event type's whole list of URLs: create (v3 POST) when it has none yet, else replace (PUT)."""
        names, row, name = self._target(req)
        urls = [u for u in req.context.form_lists.get("url", []) if u.strip()]
        try:
            if name in EVENT_TYPES and self.webhooks.all(row)["webhooks"].get(name):
                self.webhooks.update(row, name, urls)
            else:
                self.webhooks.create(row, name, urls)
        except WebhooksError as ex:
            self._render(req, resp, names, row, status=ex.http_status, error=ex.message)
            return
        raise self._back(row, "saved")

    def on_post_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        _, row, name = self._target(req)
        self.webhooks.delete(row, name)
        raise self._back(row, "deleted")

    def on_post_test(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Send a sample event to each URL now and show what each answered."""
        names, row, name = self._target(req)
        results = self.webhooks.send_test(row, name)
        self._render(req, resp, names, row, tested={"name": name, "results": results},
                     notice=f"Test {name} webhook sent to {len(results)} URL(s).")

    def on_post_signing_key(self, req: falcon.Request, resp: falcon.Response) -> None:
        _, row = self._choice(req, req.context.form)
        self.webhooks.regenerate_signing_key(req.context.user.account_id)
        raise falcon.HTTPSeeOther(f"{PREFIX}/webhooks?" + urlencode(
            {**({"domain": row["name"]} if row else {}), "done": "key"}))
