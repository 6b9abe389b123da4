"""Stripe's webhooks against a real localstripe: the events it signs and sends are captured and replayed to
POST /v1/billing/stripe/webhook byte for byte, in the order (and as often) each test chooses. A bad
signature changes nothing; an event is applied once; an older event does not undo a newer one; a failed
payment suspends the account after its grace, and paying reinstates it so that it sends again."""

from __future__ import annotations

import dataclasses
import urllib.request
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest

from tests.support.api import accepted, send_form
from tests.support.localstripe import card_payment_method, past_the_second_of

URL = "/v1/billing/stripe/webhook"
NEEDS_3DS = "4000002500003155"  # every charge waits for 3-D Secure, which the test then fails


@pytest.fixture
def api_services(services, billing):
    return dataclasses.replace(services, billing=billing)


@pytest.fixture
def queued_cleanup(db, domain):
    yield
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'", (domain["id"],))


def _deliver(client, hook, signature=None, body=None):
    return client.simulate_post(URL, body=hook.body if body is None else body, headers={
        "Content-Type": "application/json", "Stripe-Signature": hook.signature if signature is None else signature})


def _of(customer):
    return lambda event: event["data"]["object"].get("customer") == customer


def _account(db, account_id):
    return db.execute("SELECT plan, state, state_reason, billing_status, grace_until, stripe_subscription_id"
                      " FROM accounts WHERE id = %s", (account_id,)).fetchone()


def _events(db, account_id):
    return db.execute("SELECT id, type FROM stripe_events WHERE account_id = %s ORDER BY processed_at",
                      (account_id,)).fetchall()


def _fail_authentication(localstripe, billing, payment_intent: str) -> None:
    secret = billing.gateway._client.v1.payment_intents.retrieve(payment_intent).client_secret
    body = urlencode({"client_secret": secret, "success": "false"}).encode()
    req = urllib.request.Request(f"{localstripe.api_base}/v1/payment_intents/{payment_intent}/_authenticate",
                                 data=body, headers={"Authorization": f"Bearer {localstripe.secret_key}"})
    urllib.request.urlopen(req, timeout=5).close()


@pytest.fixture
def failed_then_paid(billing, localstripe, account):
    """A subscribed account whose next invoice fails with a declined card, then is paid with a good one.
    Returns (row, failed hook, paid hook); the paid event is at least a second newer than the failure."""
    row = billing.start_subscription(account["id"], "basic", card_payment_method(billing))
    customer = row["stripe_customer_id"]
    first = localstripe.webhooks.wait_for("invoice.payment_succeeded", _of(customer))  # the first invoice
    past_the_second_of(first)
    # localstripe sends invoice.payment_failed for a failed 3-D Secure authentication (not for a card
    # declined at once): the cardholder fails the challenge, as in a renewal the bank refuses.
    billing.gateway.set_payment_method(customer, card_payment_method(billing, NEEDS_3DS))
    invoice = billing.gateway.create_invoice(customer, row["stripe_subscription_id"])
    invoice = billing.gateway.pay_invoice(invoice["id"])
    assert invoice["status"] == "open"
    _fail_authentication(localstripe, billing, invoice["payment_intent"])
    failed = localstripe.webhooks.wait_for("invoice.payment_failed", _of(customer))
    past_the_second_of(failed)
    billing.gateway.set_payment_method(customer, card_payment_method(billing))
    assert billing.gateway.pay_invoice(invoice["id"])["status"] == "paid"
    paid = localstripe.webhooks.wait_for(
        "invoice.payment_succeeded", lambda e: _of(customer)(e) and e["data"]["object"]["id"] == invoice["id"])
    return row, failed, paid


def test_a_wrong_signature_is_refused_and_changes_nothing(client, failed_then_paid, db):
    row, failed, _ = failed_then_paid
    before = _account(db, row["id"])
    forged = failed.signature.replace("v1=", "v1=0")
    resp = _deliver(client, failed, signature=forged)
    assert resp.status_code == 400 and "signature" in resp.json["message"].lower()
    # the right signature over a changed body
    resp = _deliver(client, failed, body=failed.body.replace(b'"invoice.payment_failed"', b'"invoice.paid"'))
    assert resp.status_code == 400
    assert _deliver(client, failed, signature="").status_code == 400
    assert _account(db, row["id"]) == before
    assert _events(db, row["id"]) == []


def test_a_redelivered_event_is_applied_once(client, failed_then_paid, db):
    row, failed, _ = failed_then_paid
    resp = _deliver(client, failed)
    assert resp.status_code == 200 and resp.json == {"received": True, "result": "applied"}
    first = _account(db, row["id"])
    assert first["billing_status"] == "past_due"
    assert timedelta(days=6, hours=23) < first["grace_until"] - datetime.now(UTC) <= timedelta(days=7)

    assert _deliver(client, failed).json == {"received": True, "result": "duplicate"}
    assert _account(db, row["id"]) == first  # the grace is not extended by a redelivery
    assert [e["type"] for e in _events(db, row["id"])] == ["invoice.payment_failed"]


def test_an_older_event_arriving_late_does_not_undo_a_newer_one(client, failed_then_paid, db):
    row, failed, paid = failed_then_paid
    assert _deliver(client, paid).json["result"] == "applied"
    assert _deliver(client, failed).json["result"] == "stale"  # the failure was before the payment
    stored = _account(db, row["id"])
    assert (stored["billing_status"], stored["grace_until"], stored["state"]) == ("active", None, "active")
    assert {e["type"] for e in _events(db, row["id"])} == {"invoice.payment_failed", "invoice.payment_succeeded"}


def test_payment_failure_suspends_after_the_grace_and_payment_reinstates(client, billing, failed_then_paid, db,
                                                                         api_key, domain, queued_cleanup):
    row, failed, paid = failed_then_paid
    _deliver(client, failed)
    billing.sweep_dunning()
    assert _account(db, row["id"])["state"] == "active"  # within the grace: still sending
    accepted(send_form(client, api_key, domain))

    db.execute("UPDATE accounts SET grace_until = now() - interval '1 minute' WHERE id = %s", (row["id"],))
    billing.sweep_dunning()
    stored = _account(db, row["id"])
    assert stored["state"] == "suspended"
    assert stored["state_reason"].startswith("payment failed: the invoice was not paid within the grace period")
    resp = send_form(client, api_key, domain)
    assert resp.status_code == 403 and "suspended" in resp.json["message"]

    assert _deliver(client, paid).json["result"] == "applied"
    stored = _account(db, row["id"])
    assert (stored["state"], stored["billing_status"], stored["grace_until"]) == ("active", "active", None)
    accepted(send_form(client, api_key, domain))
    actions = db.execute("SELECT actor, action FROM audit_log WHERE account_id = %s"
                         " AND action IN ('account.suspended', 'account.reinstated') ORDER BY id", (row["id"],)).fetchall()
    assert [(a["actor"], a["action"]) for a in actions] == [("billing", "account.suspended"),
                                                            ("billing", "account.reinstated")]


def test_an_operator_suspension_is_not_lifted_by_a_payment(client, services, failed_then_paid, db):
    row, _, paid = failed_then_paid
    services.accounts.suspend(row["id"], "abuse report 42", actor="operator:1")
    _deliver(client, paid)
    assert _account(db, row["id"])["state"] == "suspended"


def test_subscription_deleted_returns_the_account_to_the_free_plan(client, billing, localstripe, account, db):
    row = billing.start_subscription(account["id"], "basic", card_payment_method(billing))
    billing.gateway.cancel_subscription(row["stripe_subscription_id"])
    hook = localstripe.webhooks.wait_for("customer.subscription.deleted", _of(row["stripe_customer_id"]))
    assert _deliver(client, hook).json["result"] == "applied"
    stored = _account(db, account["id"])
    assert (stored["plan"], stored["stripe_subscription_id"], stored["billing_status"]) == ("free", None, "none")


def test_the_scheduler_runs_the_dunning_sweep_only_when_stripe_is_configured(services, billing):
    from envoi import runtime

    def names(secret_key):
        settings = dataclasses.replace(services.settings, stripe_secret_key=secret_key)
        return [t.name for t in runtime.periodic_tasks(dataclasses.replace(services, settings=settings))]

    assert not any(name.startswith("billing:") for name in names(""))
    assert "billing: suspend past payment grace, reinstate when paid" in names("sk_test_x")


def test_without_a_webhook_secret_every_event_is_refused(services, billing, localstripe, account, db):
    from falcon import testing

    from envoi.api.app import create_app

    row = billing.start_subscription(account["id"], "basic", card_payment_method(billing))
    hook = localstripe.webhooks.wait_for("invoice.payment_succeeded", _of(row["stripe_customer_id"]))
    unconfigured = testing.TestClient(create_app(services.settings, services))  # the session's: no secret
    resp = _deliver(unconfigured, hook)
    assert resp.status_code == 400 and "ENVOI_STRIPE_WEBHOOK_SECRET" in resp.json["message"]
    assert _events(db, account["id"]) == []


def test_an_oversized_body_is_refused_unread(client, db):
    before = db.execute("SELECT count(*) AS n FROM stripe_events").fetchone()["n"]
    resp = client.simulate_post(URL, body=b"{" + b" " * (600 * 1024) + b"}",
                                headers={"Content-Type": "application/json", "Stripe-Signature": "t=1,v1=00"})
    assert resp.status_code == 413 and resp.json == {"message": "Stripe event too large"}
    assert db.execute("SELECT count(*) AS n FROM stripe_events").fetchone()["n"] == before


def test_the_renewal_applies_a_pending_downgrade(client, billing, localstripe, account, db):
    row = billing.start_subscription(account["id"], "scale", card_payment_method(billing))
    assert billing.change_plan(account["id"], "basic")["pending_plan"] == "basic"
    # drive the clock: the stored period ends where Stripe's next invoice starts
    db.execute("UPDATE accounts SET billing_period_end = billing_period_start WHERE id = %s", (account["id"],))
    invoice = billing.gateway.create_invoice(row["stripe_customer_id"], row["stripe_subscription_id"])
    billing.gateway.pay_invoice(invoice["id"])
    hook = localstripe.webhooks.wait_for("invoice.payment_succeeded",
                                         lambda e: e["data"]["object"]["id"] == invoice["id"])
    assert _deliver(client, hook).json["result"] == "applied"
    stored = db.execute("SELECT plan, pending_plan FROM accounts WHERE id = %s", (account["id"],)).fetchone()
    assert stored == {"plan": "basic", "pending_plan": None}
    sub = billing.gateway.subscription(row["stripe_subscription_id"])
    assert sub["items"]["data"][0]["plan"]["id"] == "envoi-basic"
