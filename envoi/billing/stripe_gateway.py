"""Stripe, through its official SDK: the only module that imports `stripe` (an import-linter contract).

Everything Envoi asks of Stripe is a method here, taking and returning plain dicts of Stripe's ids and
amounts; no card data ever passes through (a card is a PaymentMethod id made by Stripe.js). The design
uses Plans and InvoiceItems only (not Prices, usage records or meters), which is also what localstripe,
the tests' Stripe, implements.
"""

from __future__ import annotations

import stripe

from envoi.billing.errors import BadSignature, BillingError, StripeFailed
from envoi.billing.plans import Plan

ID_PREFIX = "envoi-"  # Stripe Product and Plan ids are "envoi-<plan name>": sync-plans is idempotent


def stripe_plan_id(plan_name: str) -> str:
    return ID_PREFIX + plan_name


class StripeGateway:
    def __init__(self, secret_key: str, *, api_base: str | None = None, webhook_secret: str = "",
                 publishable_key: str = "", js_url: str = "https://js.stripe.com/v3/"):
        self.configured = bool(secret_key)
        self.webhook_secret = webhook_secret
        # For Stripe.js in the browser (card entry); the page is offered only with both keys.
        self.publishable_key = publishable_key
        self.js_url = js_url
        base = {"api": api_base.rstrip("/")} if api_base else None
        self._client = stripe.StripeClient(secret_key or "sk_unset", base_addresses=base, max_network_retries=0)

    def _call(self, fn, *args, **kwargs) -> dict:
        if not self.configured:
            raise BillingError("Stripe is not configured: set ENVOI_STRIPE_SECRET_KEY")
        try:
            return fn(*args, **kwargs).to_dict()
        except stripe.StripeError as ex:
            raise StripeFailed(f"Stripe: {ex.user_message or type(ex).__name__}") from ex

    # catalogue --------------------------------------------------------------------------------------
    def ensure_plan(self, plan: Plan, currency: str) -> tuple[str, bool]:
        """The Stripe Product and monthly Plan for PLAN, created if missing. Returns (plan id, created)."""
        v1 = self._client.v1
        pid = stripe_plan_id(plan.name)
        try:
            self._call(v1.plans.retrieve, pid)
            return pid, False
        except StripeFailed as ex:
            if not isinstance(ex.__cause__, stripe.InvalidRequestError):
                raise
        try:
            self._call(v1.products.retrieve, pid)
        except StripeFailed:
            self._call(v1.products.create, {"id": pid, "name": f"Envoi {plan.title}"})
        self._call(v1.plans.create, {"id": pid, "product": pid, "amount": plan.price_per_month,
                                     "currency": currency, "interval": "month", "nickname": plan.title})
        return pid, True

    # customers and subscriptions ------------------------------------------------------------------
    def create_customer(self, region: str, account_id: int, name: str, payment_method: str | None) -> str:
        """The account's Stripe customer. Ids are per region (both count from 1) and one Stripe account
        may serve both regions: the idempotency key names the region, or the second region's account N
        would be handed the first region's customer N."""
        params: dict = {"name": name, "metadata": {"envoi_account": str(account_id), "envoi_region": region}}
        if payment_method:
            params["payment_method"] = payment_method
            params["invoice_settings"] = {"default_payment_method": payment_method}
        return self._call(self._client.v1.customers.create, params,
                          {"idempotency_key": f"envoi-{region}-customer-{account_id}"})["id"]

    def set_payment_method(self, customer: str, payment_method: str) -> None:
        """Make PAYMENT_METHOD the customer's default for invoices, attaching it first unless it already is
        (a SetupIntent made for the customer attaches its card in real Stripe)."""
        pm = self._call(self._client.v1.payment_methods.retrieve, payment_method)
        if pm.get("customer") != customer:
            self._call(self._client.v1.payment_methods.attach, payment_method, {"customer": customer})
        self._call(self._client.v1.customers.update, customer,
                   {"invoice_settings": {"default_payment_method": payment_method}})

    def default_card(self, customer: str) -> dict | None:
        """The brand and last four digits of the customer's default card (what Stripe shows; never the
        number), or None."""
        settings = self._call(self._client.v1.customers.retrieve, customer).get("invoice_settings") or {}
        pm_id = settings.get("default_payment_method")
        if not pm_id:
            return None
        card = self._call(self._client.v1.payment_methods.retrieve, pm_id).get("card") or {}
        return {"brand": card.get("brand") or "card", "last4": card.get("last4") or ""}

    # card entry: SetupIntents, confirmed by Stripe.js in the browser ----------------------------------
    def create_setup_intent(self, customer: str, account_id: int) -> dict:
        return self._call(self._client.v1.setup_intents.create, {
            "customer": customer, "usage": "off_session", "payment_method_types": ["card"],
            "metadata": {"envoi_account": str(account_id)}})

    def setup_intent(self, setup_intent_id: str) -> dict | None:
        """The SetupIntent, or None if Stripe has none by that id (StripeFailed if Stripe cannot answer)."""
        try:
            return self._call(self._client.v1.setup_intents.retrieve, setup_intent_id)
        except StripeFailed as ex:
            if isinstance(ex.__cause__, stripe.InvalidRequestError):
                return None
            raise

    def create_subscription(self, customer: str, plan_name: str, account_id: int) -> dict:
        return self._call(self._client.v1.subscriptions.create, {
            "customer": customer, "items": [{"plan": stripe_plan_id(plan_name)}],
            "metadata": {"envoi_account": str(account_id)}})

    def subscription(self, subscription_id: str) -> dict:
        return self._call(self._client.v1.subscriptions.retrieve, subscription_id)

    def change_subscription_plan(self, subscription_id: str, plan_name: str) -> dict:
        """Move the subscription's one item to PLAN now, prorated as Stripe does (its default,
        create_prorations; not sent, since localstripe does not know the parameter)."""
        sub = self.subscription(subscription_id)
        item = sub["items"]["data"][0]["id"]
        return self._call(self._client.v1.subscriptions.update, subscription_id, {
            "items": [{"id": item, "plan": stripe_plan_id(plan_name)}]})

    def cancel_subscription(self, subscription_id: str) -> dict:
        return self._call(self._client.v1.subscriptions.cancel, subscription_id)

    # invoices -----------------------------------------------------------------------------------------
    def create_invoice_item(self, customer: str, amount: int, currency: str, description: str,
                            metadata: dict, idempotency_key: str) -> str:
        return self._call(self._client.v1.invoice_items.create, {
            "customer": customer, "amount": amount, "currency": currency, "description": description,
            "metadata": metadata}, {"idempotency_key": idempotency_key})["id"]

    def pending_invoice_items(self, customer: str) -> list[dict]:
        """The customer's invoice items not yet on an invoice (what the next invoice will bill)."""
        out = self._call(self._client.v1.invoice_items.list, {"customer": customer, "limit": 100})
        return out["data"]

    def invoiced_items(self, customer: str) -> list[dict]:
        """The lines of the customer's invoices that are not void (draft, open, paid, uncollectible): what
        Stripe bills or billed, with each line's metadata (an invoice item's, copied onto its line) and
        `invoice_status`. Items once pending move here when an invoice takes them."""
        lines_of = []
        for invoice in self._call(self._client.v1.invoices.list, {"customer": customer, "limit": 100})["data"]:
            if invoice.get("status") == "void":
                continue  # a voided invoice bills nothing
            lines = invoice.get("lines") or {}
            data = lines.get("data", [])
            if lines.get("has_more"):
                data = self._call(self._client.v1.invoices.line_items.list, invoice["id"], {"limit": 100})["data"]
            lines_of += [{**line, "invoice_status": invoice.get("status")} for line in data]
        return lines_of

    def invoices(self, customer: str, limit: int = 12) -> list[dict]:
        return self._call(self._client.v1.invoices.list, {"customer": customer, "limit": limit})["data"]

    def create_invoice(self, customer: str, subscription: str | None = None) -> dict:
        params = {"customer": customer}
        if subscription:
            params["subscription"] = subscription
        return self._call(self._client.v1.invoices.create, params)

    def upcoming_invoice(self, customer: str, subscription: str) -> dict | None:
        """A preview of the subscription's next invoice (pending items included); None if there is none."""
        try:
            return self._call(self._client.v1.invoices.create_preview,
                              {"customer": customer, "subscription": subscription})
        except StripeFailed as ex:
            if isinstance(ex.__cause__, stripe.InvalidRequestError):
                return None
            raise

    def pay_invoice(self, invoice_id: str) -> dict:
        return self._call(self._client.v1.invoices.pay, invoice_id)

    # webhooks ------------------------------------------------------------------------------------------
    def verify_event(self, payload: bytes, signature: str | None) -> dict:
        """The event of a webhook request, verified with the endpoint secret (BadSignature if not)."""
        if not self.webhook_secret:
            raise BadSignature("Stripe webhooks are not configured: set ENVOI_STRIPE_WEBHOOK_SECRET")
        try:
            event = stripe.Webhook.construct_event(payload, signature or "", self.webhook_secret)
        except (stripe.SignatureVerificationError, ValueError) as ex:
            raise BadSignature("invalid Stripe-Signature") from ex
        return event.to_dict()
