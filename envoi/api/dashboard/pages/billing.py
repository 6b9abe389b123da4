"""/dashboard/billing: the account's plan, this period's usage, the upcoming and past invoices (from
Stripe), and a change of plan (Billing.change_plan: an upgrade at once, a downgrade at the period's end).
Roles: billing and admin (manage_billing).

Card entry needs Stripe.js, which loads from js.stripe.com: not testable without internet, so a first
subscription (which needs a card) is not offered here yet; see docs/billing-stripe.md."""

from __future__ import annotations

import falcon

from envoi.api.auth import SESSION
from envoi.api.dashboard.gate import PREFIX
from envoi.api.dashboard.pages.common import done_notice
from envoi.api.dashboard.templating import render
from envoi.billing.errors import BillingError

DONE = {
    "upgraded": "Your plan is changed: it applies now, and Stripe prorates the rest of this period.",
    "downgrade": "Your plan changes at the end of this billing period.",
    "kept": "You stay on your current plan; no change is pending.",
}


class BillingPage:
    """GET /dashboard/billing; POST /dashboard/billing/plan changes the plan."""
    auth, reads, writes = SESSION, "manage_billing", "manage_billing"

    def __init__(self, billing):
        self.billing = billing

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._page(req, resp, notice=done_notice(req, DONE))

    def on_post_plan(self, req: falcon.Request, resp: falcon.Response) -> None:
        account_id = req.context.user.account_id
        name = req.context.form.get("plan", "")
        summary = self.billing.summary(account_id)
        if name not in {p.name for p in summary["plans"]}:
            return self._page(req, resp, status=400, error="Pick one of the plans listed")
        if not summary["subscribed"]:
            return self._page(req, resp, status=400, error="Subscribing to a paid plan needs a card, which this"
                              " page cannot take yet: ask your operator")
        before = summary["plan"]
        try:
            row = self.billing.change_plan(account_id, name)
        except BillingError as ex:
            return self._page(req, resp, status=400, error=ex.message)
        done = "upgraded" if row["plan"] != before.name else "downgrade" if row["pending_plan"] else "kept"
        raise falcon.HTTPSeeOther(f"{PREFIX}/billing?done={done}")

    def _page(self, req, resp, *, status: int = 200, error: str | None = None, notice: str = "") -> None:
        render(req, resp, "billing.html", status=status, billing=self.billing.summary(req.context.user.account_id),
               error=error, notice=notice)
