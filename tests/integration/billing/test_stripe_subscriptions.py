"""Accounts and Stripe, against a real localstripe: a customer and a subscription with a test card, plans
synced idempotently, an upgrade at once and a downgrade at the period's end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from envoi.billing.errors import BillingInvalid
from envoi.billing.stripe_gateway import stripe_plan_id
from tests.support.localstripe import card_payment_method


def _stripe(billing):
    return billing.gateway._client.v1


def test_sync_plans_is_idempotent(billing):
    again = billing.sync_plans()
    assert {name for name, _, _ in again} == set(billing.plans.plans)
    assert not any(created for _, _, created in again)  # the session fixture created them already
    plan = _stripe(billing).plans.retrieve(stripe_plan_id("basic"))
    assert (plan.amount, plan.interval, plan.currency) == (1500, "month", "usd")


def test_subscription_with_a_test_card_stores_only_stripe_ids(billing, account, db):
    row = billing.start_subscription(account["id"], "basic", card_payment_method(billing))
    assert row["plan"] == "basic" and row["billing_status"] == "active"
    assert row["stripe_customer_id"].startswith("cus_") and row["stripe_subscription_id"].startswith("sub_")
    assert row["billing_period_start"] <= datetime.now(UTC) < row["billing_period_end"]

    sub = _stripe(billing).subscriptions.retrieve(row["stripe_subscription_id"])
    assert sub.status == "active" and sub.customer == row["stripe_customer_id"]
    assert sub["items"].data[0].plan.id == stripe_plan_id("basic")
    invoices = _stripe(billing).invoices.list({"customer": row["stripe_customer_id"]}).data
    assert [(i.status, i.total) for i in invoices] == [("paid", 1500)]
    # no card data anywhere in the account's row
    stored = db.execute("SELECT * FROM accounts WHERE id = %s", (account["id"],)).fetchone()
    assert not any("4242" in str(v) for v in stored.values())


def test_bad_plan_and_second_subscription_are_refused_and_change_nothing(billing, account, db):
    with pytest.raises(BillingInvalid, match="no such plan"):
        billing.start_subscription(account["id"], "platinum", card_payment_method(billing))
    with pytest.raises(BillingInvalid, match="not a paid plan"):
        billing.start_subscription(account["id"], "free", card_payment_method(billing))
    row = db.execute("SELECT plan, stripe_customer_id FROM accounts WHERE id = %s", (account["id"],)).fetchone()
    assert row == {"plan": "free", "stripe_customer_id": None}

    first = billing.start_subscription(account["id"], "basic", card_payment_method(billing))
    with pytest.raises(BillingInvalid, match="already has a subscription"):
        billing.start_subscription(account["id"], "scale")
    row = db.execute("SELECT plan, stripe_subscription_id FROM accounts WHERE id = %s", (account["id"],)).fetchone()
    assert row == {"plan": "basic", "stripe_subscription_id": first["stripe_subscription_id"]}


def test_upgrade_applies_at_once_with_stripe_proration(billing, account):
    row = billing.start_subscription(account["id"], "basic", card_payment_method(billing))
    after = billing.change_plan(account["id"], "scale")
    assert after["plan"] == "scale" and after["pending_plan"] is None
    sub = _stripe(billing).subscriptions.retrieve(row["stripe_subscription_id"])
    assert sub["items"].data[0].plan.id == stripe_plan_id("scale")
    # Stripe credits the unused time of the old plan on the next invoice
    pending = _stripe(billing).invoice_items.list({"customer": row["stripe_customer_id"]}).data
    assert [(i.proration, i.amount) for i in pending] == [(True, -1500)]


def test_downgrade_waits_for_the_period_end(billing, account, db):
    row = billing.start_subscription(account["id"], "scale", card_payment_method(billing))
    after = billing.change_plan(account["id"], "basic")
    assert (after["plan"], after["pending_plan"]) == ("scale", "basic")
    sub = _stripe(billing).subscriptions.retrieve(row["stripe_subscription_id"])
    assert sub["items"].data[0].plan.id == stripe_plan_id("scale")  # Stripe unchanged until the period ends

    billing.apply_due_downgrades()  # the scheduler, before the period ends: nothing changes
    assert db.execute("SELECT plan, pending_plan FROM accounts WHERE id = %s",
                      (account["id"],)).fetchone() == {"plan": "scale", "pending_plan": "basic"}
    # the period ends (the scheduler's clock moves past it)
    billing.apply_due_downgrades(now=row["billing_period_end"] + timedelta(seconds=1))
    stored = db.execute("SELECT plan, pending_plan FROM accounts WHERE id = %s", (account["id"],)).fetchone()
    assert stored == {"plan": "basic", "pending_plan": None}
    sub = _stripe(billing).subscriptions.retrieve(row["stripe_subscription_id"])
    assert sub["items"].data[0].plan.id == stripe_plan_id("basic")


def test_downgrade_to_free_cancels_the_subscription_at_the_period_end(billing, account, db):
    row = billing.start_subscription(account["id"], "basic", card_payment_method(billing))
    assert billing.change_plan(account["id"], "free")["pending_plan"] == "free"
    billing.apply_due_downgrades(now=row["billing_period_end"] + timedelta(seconds=1))
    stored = db.execute("SELECT plan, stripe_subscription_id, billing_status FROM accounts WHERE id = %s",
                        (account["id"],)).fetchone()
    assert stored == {"plan": "free", "stripe_subscription_id": None, "billing_status": "none"}
    assert _stripe(billing).subscriptions.retrieve(row["stripe_subscription_id"]).status == "canceled"


def test_a_subscription_reaches_every_processs_cached_plan_at_once(services, billing, account, api_key, db):
    """Billing changes plans outside Accounts.set_plan: it must bump the same generation, or a process
    with a warm cache would hold the account to its old plan's quota."""
    from envoi.accounts.service import Accounts
    from envoi.infra import redis as redis_infra

    other = Accounts(services.db, services.sealer, services.settings.region, audit=services.audit,
                     key_revocations=redis_infra.Generation(services.redis,
                                                            f"envoi:{services.settings.region}:keys:revoked"))
    assert other.authenticate_key(api_key).plan == "free"  # warm
    billing.start_subscription(account["id"], "basic", card_payment_method(billing))
    assert other.authenticate_key(api_key).plan == "basic"
    billing.change_plan(account["id"], "scale")  # an upgrade applies at once
    assert other.authenticate_key(api_key).plan == "scale"
    audit = db.execute("SELECT actor, details FROM audit_log WHERE account_id = %s AND action = 'account.plan'"
                       " ORDER BY id", (account["id"],)).fetchall()
    assert [(a["actor"], a["details"]["to"]) for a in audit] == [("billing", "basic"), ("billing", "scale")]
