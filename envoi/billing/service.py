"""Billing: accounts' Stripe customers and subscriptions, plan changes, metered overage and Stripe's
webhooks. Postgres keeps only Stripe's ids and what Envoi needs to act (status, grace, pending plan);
Stripe is the record of money. docs/billing-stripe.md describes the flows."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

from envoi.accounts.service import Accounts
from envoi.billing import store
from envoi.billing.errors import BillingError, BillingInvalid, BillingNotFound
from envoi.billing.plans import Plan, Plans
from envoi.billing.stripe_gateway import StripeGateway
from envoi.billing.usage import accepted_in_period
from envoi.infra.db import Database

log = logging.getLogger(__name__)

PAYMENT_FAILED = "payment failed"  # the suspension reason's prefix: only these are lifted by a payment
ACTOR = "billing"
PAID_EVENTS = ("invoice.paid", "invoice.payment_succeeded")  # localstripe sends the latter only
SETUP_INTENT_ID = re.compile(r"seti_[A-Za-z0-9]{1,100}")  # Stripe's ids; anything else never reaches its URL


def _ts(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(int(value), UTC)


def overage_cost(units: int, per_1000: int) -> int:
    """Cents for UNITS messages beyond the included volume, rounded up to the cent."""
    return -(-units * per_1000 // 1000)


def overage_key(region: str, account_id: int, period_start: datetime, cumulative: int) -> str:
    """One key per (region, account, period, cumulative units billed): a retry of the same push reuses it.
    The region, because account ids are per region and one Stripe account may serve both (an intent
    recorded before this key named it keeps its own key, stored with it)."""
    return f"envoi-{region}-overage-{account_id}-{int(period_start.timestamp())}-{cumulative}"


def _invoice_view(invoice: dict) -> dict:
    """The fields of a Stripe invoice a page shows (no customer data beyond the amounts)."""
    return {"id": invoice.get("id"), "number": invoice.get("number"), "status": invoice.get("status"),
            "total": invoice.get("total") or 0, "currency": invoice.get("currency", ""),
            "created": _ts(invoice.get("created") or invoice.get("date")),
            "period_start": _ts(invoice.get("period_start")), "period_end": _ts(invoice.get("period_end")),
            "lines": [{"description": line.get("description") or "", "amount": line.get("amount") or 0}
                      for line in (invoice.get("lines") or {}).get("data", [])]}


class Billing:
    def __init__(self, db: Database, accounts: Accounts, plans: Plans, gateway: StripeGateway,
                 grace_seconds: float):
        self.db = db
        self.accounts = accounts
        self.plans = plans
        self.gateway = gateway
        self.grace = timedelta(seconds=grace_seconds)

    def _plan(self, name: str) -> Plan:
        if name not in self.plans.plans:
            raise BillingInvalid(f"no such plan: {name!r} (plans: {', '.join(self.plans.plans)})")
        return self.plans.plans[name]

    def _account(self, conn, account_id: int) -> dict:
        row = store.account_for_update(conn, account_id)
        if row is None:
            raise BillingNotFound(f"Account not found: {account_id}")
        return row

    # catalogue ---------------------------------------------------------------------------------------
    def sync_plans(self) -> list[tuple[str, str, bool]]:
        """Create the Stripe Product and Plan of every plan that lacks them: (name, Stripe id, created)."""
        return [(plan.name, *self.gateway.ensure_plan(plan, self.plans.currency)) for plan in self.plans]

    # card entry ----------------------------------------------------------------------------------------
    @property
    def card_entry(self) -> bool:
        """Whether the billing page may take a card (Stripe configured, billing on, a publishable key)."""
        return self.gateway.configured and bool(self.gateway.publishable_key)

    def _customer(self, account: dict, payment_method: str | None = None) -> str:
        """The account's Stripe customer id, creating the customer (with PAYMENT_METHOD as its default) the
        first time."""
        if account["stripe_customer_id"]:
            return account["stripe_customer_id"]
        customer = self.gateway.create_customer(self.accounts.region, account["id"], account["name"], payment_method)
        with self.db.transaction() as conn:
            store.update_account(conn, account["id"], stripe_customer_id=customer)
        return customer

    def begin_card_setup(self, account_id: int) -> dict:
        """A SetupIntent for the account's customer (made if needed), for Stripe.js to confirm in the
        browser with the card it takes: Envoi sees only the SetupIntent's id and client secret (which it
        never stores). Returns what the page needs: client_secret, publishable_key, js_url."""
        if not self.card_entry:
            raise BillingInvalid("This region takes no cards: billing with Stripe.js is not configured")
        with self.db.transaction() as conn:
            account = self._account(conn, account_id)
        customer = self._customer(account)
        intent = self.gateway.create_setup_intent(customer, account_id)
        return {"client_secret": intent["client_secret"], "publishable_key": self.gateway.publishable_key,
                "js_url": self.gateway.js_url}

    def confirm_card(self, account_id: int, setup_intent_id: str, actor: str = ACTOR) -> dict:
        """After Stripe.js confirmed a SetupIntent in the browser: check at Stripe that it is this account's
        customer's and succeeded, then make its card the customer's default (for the subscription's
        invoices). Returns the card's brand and last four digits. Refused (nothing changed) otherwise."""
        if not SETUP_INTENT_ID.fullmatch(setup_intent_id or ""):
            raise BillingInvalid("setup_intent must be a Stripe SetupIntent id (seti_...)")
        with self.db.transaction() as conn:
            account = self._account(conn, account_id)
        customer = account["stripe_customer_id"]
        intent = self.gateway.setup_intent(setup_intent_id) if customer else None
        if intent is None or intent.get("customer") != customer:
            # Another customer's (or an unknown) SetupIntent: say nothing about it.
            raise BillingNotFound(f"No card setup {setup_intent_id} for this account")
        if intent.get("status") != "succeeded" or not intent.get("payment_method"):
            raise BillingInvalid(f"The card setup is not complete (Stripe says {intent.get('status')}):"
                                 " enter the card again")
        self.gateway.set_payment_method(customer, intent["payment_method"])
        self.accounts.audit.record(account_id, actor, "billing.card", customer,
                                   details={"setup_intent": setup_intent_id})
        return self.gateway.default_card(customer) or {}

    # subscriptions -----------------------------------------------------------------------------------
    def start_subscription(self, account_id: int, plan: str, payment_method: str | None = None) -> dict:
        """Subscribe the account to a paid PLAN, creating its Stripe customer (with the PaymentMethod id
        Stripe.js made, if given) the first time. The plan applies at once. Returns the account row."""
        target = self._plan(plan)
        if not target.paid:
            raise BillingInvalid(f"{plan} is not a paid plan: nothing to subscribe to")
        with self.db.transaction() as conn:
            account = self._account(conn, account_id)
        if account["stripe_subscription_id"]:
            raise BillingInvalid("the account already has a subscription: change its plan instead")
        had_customer = bool(account["stripe_customer_id"])
        customer = self._customer(account, payment_method)
        if had_customer and payment_method:
            self.gateway.set_payment_method(customer, payment_method)
        sub = self.gateway.create_subscription(customer, plan, account_id)
        paying = sub["status"] in ("active", "trialing")
        return self._set_plan(account_id, plan, stripe_subscription_id=sub["id"],
                              billing_status="active" if paying else "past_due",
                              billing_period_start=_ts(sub["current_period_start"]),
                              billing_period_end=_ts(sub["current_period_end"]),
                              **({} if paying else {"grace_until": datetime.now(UTC) + self.grace}))

    def change_plan(self, account_id: int, plan: str) -> dict:
        """An upgrade (a dearer plan) applies at once, Stripe prorating the rest of the period; a downgrade
        waits for the period's end (pending_plan), when the renewal or the scheduler applies it."""
        target = self._plan(plan)
        with self.db.transaction() as conn:
            account = self._account(conn, account_id)
        if not account["stripe_subscription_id"]:
            if target.paid:
                return self.start_subscription(account_id, plan)
            return self._set_plan(account_id, plan)
        current = self.plans.get(account["plan"])
        if plan == current.name:
            with self.db.transaction() as conn:  # changing back cancels a pending downgrade
                store.update_account(conn, account_id, pending_plan=None)
                return self._account(conn, account_id)
        if target.price_per_month > current.price_per_month:
            self.push_overage(account_id)  # usage so far is billed at the old plan's terms
            sub = self.gateway.change_subscription_plan(account["stripe_subscription_id"], plan)
            return self._set_plan(account_id, plan, billing_period_end=_ts(sub["current_period_end"]))
        with self.db.transaction() as conn:
            store.update_account(conn, account_id, pending_plan=plan)
            return self._account(conn, account_id)

    def apply_due_downgrades(self, now: datetime | None = None) -> int:
        """Scheduler: apply each pending downgrade whose period has ended. Returns how many."""
        now = now or datetime.now(UTC)
        with self.db.transaction() as conn:
            due = [r["id"] for r in store.accounts_with_due_downgrade(conn, now)]
        for account_id in due:
            self._apply_downgrade(account_id)
        return len(due)

    def _apply_downgrade(self, account_id: int) -> None:
        with self.db.transaction() as conn:
            account = self._account(conn, account_id)
        plan = account["pending_plan"]
        if not plan:
            return
        sub_id = account["stripe_subscription_id"]
        if self.plans.get(plan).paid and sub_id:
            sub = self.gateway.change_subscription_plan(sub_id, plan)
            columns = {"billing_period_start": _ts(sub["current_period_start"]),
                       "billing_period_end": _ts(sub["current_period_end"])}
        else:
            if sub_id:
                self.gateway.cancel_subscription(sub_id)
            columns = {"stripe_subscription_id": None, "billing_status": "none", "grace_until": None}
        self._set_plan(account_id, plan, **columns)

    def _set_plan(self, account_id: int, plan: str, **columns) -> dict:
        """Put the account on PLAN (and set COLUMNS) in one transaction, audited, then bump the generation
        cached principals are filed under, so quotas use the new plan at once in every process."""
        with self.db.transaction() as conn:
            before = self._account(conn, account_id)
            store.update_account(conn, account_id, plan=plan, pending_plan=None, **columns)
            self._audit_plan(conn, account_id, before["plan"], plan)
            row = self._account(conn, account_id)
        self.accounts.plan_changed()
        return row

    def _audit_plan(self, conn, account_id: int, before: str, plan: str) -> None:
        if before != plan:
            self.accounts.audit.record(account_id, "billing", "account.plan", str(account_id), conn=conn,
                                       details={"from": before, "to": plan})

    # overage -----------------------------------------------------------------------------------------
    def push_overage(self, account_id: int, now: datetime | None = None) -> int:
        """Bill the account's usage beyond its plan's included volume this period as a Stripe invoice
        item, for what was not billed yet. Safe to repeat and to crash anywhere: the intent is recorded
        first under a deterministic key, and an unconfirmed intent is looked up at Stripe (by the key in
        the item's metadata) before it is created. Returns the units pushed now."""
        self._settle_unconfirmed(account_id)
        with self.db.transaction() as conn:
            account = self._account(conn, account_id)
            plan = self.plans.get(account["plan"])
            start, end = account["billing_period_start"], account["billing_period_end"]
            if (not account["stripe_subscription_id"] or plan.overage_per_1000 is None or not plan.paid
                    or start is None):
                return 0
            used = accepted_in_period(conn, account_id, start, end or now or datetime.now(UTC))
            over = max(0, used - plan.included_per_month)
            billed = max((p["cumulative_units"] for p in store.overage_pushes(conn, account_id, start)), default=0)
            if over <= billed:
                return 0
            amount = overage_cost(over, plan.overage_per_1000) - overage_cost(billed, plan.overage_per_1000)
            key = overage_key(self.accounts.region, account_id, start, over)
            store.insert_overage_intent(conn, key, account_id, start, over, over - billed, amount)
        self._push(account, key, start, over, over - billed, amount)
        return over - billed

    def _push(self, account: dict, key: str, start: datetime, cumulative: int, units: int, amount: int) -> None:
        metadata = {"envoi_key": key, "envoi_kind": "overage", "envoi_account": str(account["id"]),
                    "envoi_region": self.accounts.region,
                    "envoi_period_start": str(int(start.timestamp())), "envoi_units": str(units),
                    "envoi_cumulative": str(cumulative)}
        item = self.gateway.create_invoice_item(
            account["stripe_customer_id"], amount, self.plans.currency,
            f"{units:,} messages beyond the plan's included volume", metadata, key)
        with self.db.transaction() as conn:
            store.confirm_overage(conn, key, item)

    def _settle_unconfirmed(self, account_id: int) -> None:
        with self.db.transaction() as conn:
            pending = store.unconfirmed_overage(conn, account_id)
            account = self._account(conn, account_id) if pending else None
        if not pending:
            return
        at_stripe = {i["metadata"].get("envoi_key"): i["id"]
                     for i in self.gateway.pending_invoice_items(account["stripe_customer_id"])}
        for row in pending:
            key = row["idempotency_key"]
            if key in at_stripe:
                with self.db.transaction() as conn:
                    store.confirm_overage(conn, key, at_stripe[key])
            else:
                self._push(account, key, row["period_start"], row["cumulative_units"], row["units"], row["amount"])

    def push_all_overage(self) -> int:
        """Scheduler: push_overage for every subscribed account on a plan that sells overage."""
        names = [p.name for p in self.plans if p.overage_per_1000 is not None and p.paid]
        with self.db.transaction() as conn:
            ids = [r["id"] for r in store.accounts_with_overage_plans(conn, names)]
        pushed = 0
        for account_id in ids:
            try:
                pushed += self.push_overage(account_id)
            except BillingError:
                log.exception("overage push failed for account %s", account_id)
        return pushed

    def billed_accounts(self) -> list[int]:
        """The accounts that have a Stripe customer."""
        with self.db.transaction() as conn:
            return store.stripe_customers(conn)

    def reconcile(self, account_id: int) -> dict:
        """Envoi's count of this period's usage and overage beside what Stripe holds for it: the overage
        items still pending plus those already on the period's invoices (draft, finalised or paid; not
        void), matched by the metadata Envoi gave them."""
        with self.db.transaction() as conn:
            account = self._account(conn, account_id)
            plan = self.plans.get(account["plan"])
            start, end = account["billing_period_start"], account["billing_period_end"]
            used = accepted_in_period(conn, account_id, start, end) if start and end else 0
            pushes = store.overage_pushes(conn, account_id, start) if start else []
        over = max(0, used - plan.included_per_month) if plan.overage_per_1000 is not None else 0
        sides = {"pending": [0, 0], "invoiced": [0, 0]}  # [units, amount]
        if account["stripe_customer_id"] and start:
            customer = account["stripe_customer_id"]
            for side, items in (("pending", self.gateway.pending_invoice_items(customer)),
                                ("invoiced", self.gateway.invoiced_items(customer))):
                for item in items:
                    meta = item.get("metadata") or {}
                    if meta.get("envoi_kind") == "overage" and meta.get("envoi_period_start") == str(
                            int(start.timestamp())):
                        sides[side][0] += int(meta.get("envoi_units", 0))
                        sides[side][1] += item["amount"]
        stripe_units = sides["pending"][0] + sides["invoiced"][0]
        stripe_amount = sides["pending"][1] + sides["invoiced"][1]
        return {"account": account_id, "plan": plan.name, "period_start": start, "period_end": end,
                "accepted": used, "overage_units": over,
                "envoi_pushed_units": sum(p["units"] for p in pushes if p["stripe_item_id"]),
                "envoi_unconfirmed_units": sum(p["units"] for p in pushes if not p["stripe_item_id"]),
                "stripe_units": stripe_units, "stripe_amount": stripe_amount,
                "stripe_pending_units": sides["pending"][0], "stripe_invoiced_units": sides["invoiced"][0]}

    # the account's view ------------------------------------------------------------------------------
    def summary(self, account_id: int) -> dict:
        """What the account's billing page shows: its plan (and a pending downgrade), status and grace,
        this period's usage against the included volume, the upcoming invoice and the past ones (amounts in
        cents, from Stripe). Stripe is asked only when the account has a customer there."""
        with self.db.transaction() as conn:
            account = self._account(conn, account_id)
            start, end = account["billing_period_start"], account["billing_period_end"]
            now = datetime.now(UTC)
            if start is None:  # no subscription: the calendar month, as the quotas count it
                start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
                end = (start + timedelta(days=32)).replace(day=1)
            used = accepted_in_period(conn, account_id, start, end)
        plan = self.plans.get(account["plan"])
        upcoming, invoices, card = None, [], None
        if account["stripe_customer_id"] and self.gateway.configured:
            if account["stripe_subscription_id"]:
                upcoming = self.gateway.upcoming_invoice(account["stripe_customer_id"],
                                                         account["stripe_subscription_id"])
            invoices = self.gateway.invoices(account["stripe_customer_id"])
            card = self.gateway.default_card(account["stripe_customer_id"])
        return {"plan": plan, "pending_plan": account["pending_plan"] and self.plans.get(account["pending_plan"]),
                "status": account["billing_status"], "grace_until": account["grace_until"],
                "subscribed": bool(account["stripe_subscription_id"]), "period_start": start, "period_end": end,
                "used": used, "included": plan.included_per_month,
                "overage_units": max(0, used - plan.included_per_month) if plan.overage_per_1000 is not None else 0,
                "upcoming": upcoming and _invoice_view(upcoming), "invoices": [_invoice_view(i) for i in invoices],
                "plans": list(self.plans), "currency": self.plans.currency,
                "card": card, "card_entry": self.card_entry}

    # webhooks ----------------------------------------------------------------------------------------
    def handle_webhook(self, payload: bytes, signature: str | None) -> str:
        """Verify and apply one Stripe event, once. Returns what was done ("applied", "duplicate",
        "stale", "ignored"); BadSignature (400) changes nothing."""
        event = self.gateway.verify_event(payload, signature)
        obj = event["data"]["object"]
        created = int(event["created"])
        customer = obj.get("customer") if obj.get("object") != "customer" else obj.get("id")
        follow_up = None
        with self.db.transaction() as conn:
            account = store.account_by_customer(conn, customer) if isinstance(customer, str) else None
            if account is None:
                # Not a customer of this region: one Stripe account serves every region and sends each
                # endpoint every event, so this may be another region's customer. Nothing of it is kept
                # (regions never mix); an event that arrives before its customer is stored here is taken
                # when Stripe sends it again.
                return "ignored"
            if not store.record_event(conn, event["id"], event["type"], created, account["id"]):
                return "duplicate"
            if created < account["billing_synced_at"]:
                return "stale"  # a newer event already set the state this one would overwrite
            result, follow_up = self._apply(conn, account, event["type"], obj, created)
        if follow_up == "plan":
            self.accounts.plan_changed()  # after the commit: no process caches the old plan under the new count
        if follow_up in ("reinstate", "renewed"):
            self._reinstate_if_suspended_for_payment(account["id"])
        if follow_up == "renewed":
            self._apply_downgrade(account["id"])  # the period a downgrade waited for has ended
        elif follow_up == "overage":
            # Stripe finalises a subscription's invoice about an hour after invoice.created: the period's
            # overage must be on it by then. The event is recorded; if Stripe fails now, the hourly sweep
            # pushes it (the event is acknowledged either way, or Stripe would redeliver a duplicate).
            try:
                self.push_overage(account["id"])
            except BillingError:
                log.exception("overage push on invoice.created failed for account %s", account["id"])
        return result

    def _apply(self, conn, account: dict, type_: str, obj: dict, created: int) -> tuple[str, str | None]:
        aid = account["id"]
        if type_ == "invoice.payment_failed":
            grace = account["grace_until"] or datetime.now(UTC) + self.grace  # retries do not extend it
            store.update_account(conn, aid, billing_status="past_due", grace_until=grace, billing_synced_at=created)
            return "applied", None
        if type_ in PAID_EVENTS:
            columns = {"billing_status": "active", "grace_until": None, "billing_synced_at": created}
            start, end = _ts(obj.get("period_start")), _ts(obj.get("period_end"))
            this_subscription = obj.get("subscription") == account["stripe_subscription_id"]
            newer = account["billing_period_start"] is None or (start and start >= account["billing_period_start"])
            if start and end and this_subscription and newer:
                columns.update(billing_period_start=start, billing_period_end=end)
            store.update_account(conn, aid, **columns)
            renewed = start and account["billing_period_end"] and start >= account["billing_period_end"]
            return "applied", "renewed" if renewed and account["pending_plan"] else "reinstate"
        if type_ == "customer.subscription.deleted":
            if obj.get("id") != account["stripe_subscription_id"]:
                return "ignored", None  # an older subscription's end
            store.update_account(conn, aid, plan=self.plans.default, stripe_subscription_id=None,
                                 billing_status="none", grace_until=None, pending_plan=None,
                                 billing_synced_at=created)
            self._audit_plan(conn, aid, account["plan"], self.plans.default)
            return "applied", "plan"
        if type_ == "invoice.created" and account["stripe_subscription_id"]:
            return "applied", "overage"
        return "ignored", None

    def _reinstate_if_suspended_for_payment(self, account_id: int) -> None:
        row = self.accounts.get_account(account_id)
        if row["state"] == "suspended" and row["state_reason"].startswith(PAYMENT_FAILED):
            self.accounts.reinstate(account_id, actor=ACTOR)

    # dunning -----------------------------------------------------------------------------------------
    def sweep_dunning(self, now: datetime | None = None) -> tuple[int, int]:
        """Scheduler: suspend accounts whose payment grace has passed; reinstate those suspended for
        payment that are paid again (in case a webhook's reinstatement was interrupted).
        Returns (suspended, reinstated)."""
        now = now or datetime.now(UTC)
        with self.db.transaction() as conn:
            overdue = store.accounts_past_grace(conn, now)
            paid = store.accounts_paid_but_suspended(conn, PAYMENT_FAILED)
        for row in overdue:
            self.accounts.suspend(row["id"], f"{PAYMENT_FAILED}: the invoice was not paid within the grace"
                                  f" period (ended {row['grace_until']:%Y-%m-%d %H:%M} UTC); pay it to send again",
                                  actor=ACTOR)
        for row in paid:
            self.accounts.reinstate(row["id"], actor=ACTOR)
        return len(overdue), len(paid)
