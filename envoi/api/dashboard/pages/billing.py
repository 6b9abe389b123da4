"""/dashboard/billing: the account's plan, this period's usage, the upcoming and past invoices (from
Stripe), its card, and a change of plan (Billing.change_plan: an upgrade at once, a downgrade at the
period's end; a first paid plan subscribes with the card on file). Roles: billing and admin
(manage_billing).

Card entry is Stripe's: POST /dashboard/billing/card makes a SetupIntent for the account's customer and
renders the card page, the only one that loads Stripe.js (its CSP allows Stripe.js's origin and nothing
else more); static/billing_card.js mounts Stripe's card element and confirms the SetupIntent with Stripe
from the browser, then posts only the SetupIntent's id to /dashboard/billing/card/confirm. The card
number goes to Stripe, never to Envoi. docs/billing-stripe.md."""

from __future__ import annotations

import falcon

from envoi.api.auth import SESSION
from envoi.api.dashboard import security
from envoi.api.dashboard.gate import PREFIX
from envoi.api.dashboard.pages.common import done_notice
from envoi.api.dashboard.pages.keys import page_actor
from envoi.api.dashboard.templating import render
from envoi.billing.errors import BillingError

DONE = {
    "upgraded": "Your plan is changed: it applies now, and Stripe prorates the rest of this period.",
    "subscribed": "You are subscribed: the plan applies now, and the card on file is charged for it.",
    "downgrade": "Your plan changes at the end of this billing period.",
    "kept": "You stay on your current plan; no change is pending.",
    "card": "Your card is saved with Stripe: invoices are charged to it from now on.",
}


class BillingPage:
    """GET /dashboard/billing; POST …/plan changes the plan; POST …/card starts card entry (Stripe.js) and
    POST …/card/confirm saves the card Stripe confirmed."""
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
        if not summary["subscribed"] and not summary["card"]:
            return self._page(req, resp, status=400, error=(
                "Subscribing to a paid plan needs a card: add one first" if summary["card_entry"] else
                "Subscribing to a paid plan needs a card, which this region takes through its operator: ask them"))
        before, subscribed = summary["plan"], summary["subscribed"]
        try:
            row = self.billing.change_plan(account_id, name)
        except BillingError as ex:
            return self._page(req, resp, status=400, error=ex.message)
        if row["plan"] != before.name:
            done = "upgraded" if subscribed else "subscribed"
        else:
            done = "downgrade" if row["pending_plan"] else "kept"
        raise falcon.HTTPSeeOther(f"{PREFIX}/billing?done={done}")

    def on_post_card(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            setup = self.billing.begin_card_setup(req.context.user.account_id)
        except BillingError as ex:
            return self._page(req, resp, status=ex.http_status, error=ex.message)
        req.context.content_policy = security.with_stripe_js(setup["js_url"])
        render(req, resp, "billing_card.html", setup=setup)

    def on_post_card_confirm(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            self.billing.confirm_card(req.context.user.account_id, req.context.form.get("setup_intent", ""),
                                      actor=page_actor(req))
        except BillingError as ex:
            return self._page(req, resp, status=ex.http_status, error=ex.message)
        raise falcon.HTTPSeeOther(f"{PREFIX}/billing?done=card")

    def _page(self, req, resp, *, status: int = 200, error: str | None = None, notice: str = "") -> None:
        render(req, resp, "billing.html", status=status, billing=self.billing.summary(req.context.user.account_id),
               error=error, notice=notice)
