"""Metered overage against a real localstripe: what an account sends beyond its plan's included volume is
pushed to Stripe as an invoice item once, even when the push crashes after Stripe's reply and before
Postgres records it, or before Stripe is called at all. Messages are sent through the API, so the usage
comes from the real stats rollups."""

from __future__ import annotations

import pytest

from envoi.billing.stripe_gateway import StripeGateway
from tests.support.api import accepted, send_form
from tests.support.localstripe import TEST_INCLUDED, card_payment_method, make_billing


class Crash(Exception):
    pass


class CrashAfterStripe(StripeGateway):
    """Stripe creates the item, then the process dies before Envoi records it."""

    def create_invoice_item(self, *args, **kwargs):
        super().create_invoice_item(*args, **kwargs)
        raise Crash("killed after Stripe replied")


class CrashBeforeStripe(StripeGateway):
    def create_invoice_item(self, *args, **kwargs):
        raise Crash("killed before Stripe was called")


@pytest.fixture
def subscribed(billing, account, domain, db):
    row = billing.start_subscription(account["id"], "basic", card_payment_method(billing))
    yield row
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'", (domain["id"],))


def _send(client, api_key, domain, count):
    for _ in range(count):
        accepted(send_form(client, api_key, domain))


def _overage_items(billing, customer):
    items = billing.gateway._client.v1.invoice_items.list({"customer": customer}).to_dict()["data"]
    return [i for i in items if i["metadata"].get("envoi_kind") == "overage"]


def test_overage_beyond_the_included_volume_is_pushed_once(billing, subscribed, client, api_key, domain, db):
    customer = subscribed["stripe_customer_id"]
    _send(client, api_key, domain, TEST_INCLUDED)
    assert billing.push_overage(subscribed["id"]) == 0  # within the plan
    assert _overage_items(billing, customer) == []

    _send(client, api_key, domain, 2)
    assert billing.push_overage(subscribed["id"]) == 2
    assert billing.push_overage(subscribed["id"]) == 0  # nothing new: nothing pushed twice
    [item] = _overage_items(billing, customer)
    assert (item["amount"], item["currency"], item["metadata"]["envoi_units"]) == (1, "usd", "2")  # 2 x $1.80/1000, rounded up

    _send(client, api_key, domain, 1000)
    assert billing.push_overage(subscribed["id"]) == 1000
    items = sorted(_overage_items(billing, customer), key=lambda i: int(i["metadata"]["envoi_cumulative"]))
    # cumulative 1002 messages cost ceil(180.36) = 181 cents; 1 was billed already
    assert [(i["metadata"]["envoi_cumulative"], i["amount"]) for i in items] == [("2", 1), ("1002", 180)]
    rows = db.execute("SELECT cumulative_units, units, amount, stripe_item_id FROM billing_overage_pushes"
                      " WHERE account_id = %s ORDER BY cumulative_units", (subscribed["id"],)).fetchall()
    assert [(r["cumulative_units"], r["units"], r["amount"]) for r in rows] == [(2, 2, 1), (1002, 1000, 180)]
    assert [r["stripe_item_id"] for r in rows] == [i["id"] for i in items]

    report = billing.reconcile(subscribed["id"])
    assert (report["accepted"], report["overage_units"], report["envoi_pushed_units"], report["stripe_units"],
            report["stripe_amount"]) == (1005, 1002, 1002, 1002, 181)


def test_crash_after_stripe_replied_does_not_bill_twice(billing, subscribed, services, localstripe, test_plans,
                                                          client, api_key, domain, db):
    _send(client, api_key, domain, TEST_INCLUDED + 4)
    crashing = make_billing(services, localstripe, test_plans, gateway_class=CrashAfterStripe)
    with pytest.raises(Crash):
        crashing.push_overage(subscribed["id"])
    [item] = _overage_items(billing, subscribed["stripe_customer_id"])  # Stripe has it ...
    row = db.execute("SELECT idempotency_key, stripe_item_id FROM billing_overage_pushes WHERE account_id = %s",
                     (subscribed["id"],)).fetchone()
    assert row["stripe_item_id"] is None  # ... Envoi never heard back
    assert item["metadata"]["envoi_key"] == row["idempotency_key"]

    assert billing.push_overage(subscribed["id"]) == 0  # the retry finds the item by its key
    assert [i["id"] for i in _overage_items(billing, subscribed["stripe_customer_id"])] == [item["id"]]
    assert db.execute("SELECT stripe_item_id FROM billing_overage_pushes WHERE account_id = %s",
                      (subscribed["id"],)).fetchone()["stripe_item_id"] == item["id"]
    report = billing.reconcile(subscribed["id"])
    assert (report["envoi_pushed_units"], report["envoi_unconfirmed_units"], report["stripe_units"]) == (4, 0, 4)


def test_crash_before_stripe_was_called_pushes_once_on_retry(billing, subscribed, services, localstripe, test_plans,
                                                               client, api_key, domain, db):
    _send(client, api_key, domain, TEST_INCLUDED + 3)
    with pytest.raises(Crash):
        make_billing(services, localstripe, test_plans, gateway_class=CrashBeforeStripe).push_overage(subscribed["id"])
    assert _overage_items(billing, subscribed["stripe_customer_id"]) == []
    assert billing.reconcile(subscribed["id"])["envoi_unconfirmed_units"] == 3

    assert billing.push_overage(subscribed["id"]) == 0  # the recorded intent is pushed, not a new one
    [item] = _overage_items(billing, subscribed["stripe_customer_id"])
    assert item["metadata"]["envoi_units"] == "3"
    assert billing.push_overage(subscribed["id"]) == 0
    assert len(_overage_items(billing, subscribed["stripe_customer_id"])) == 1


def test_overage_lands_on_the_next_invoice(billing, subscribed, client, api_key, domain):
    _send(client, api_key, domain, TEST_INCLUDED + 10)
    billing.push_overage(subscribed["id"])
    invoice = billing.gateway.create_invoice(subscribed["stripe_customer_id"], subscribed["stripe_subscription_id"])
    descriptions = [line["description"] for line in invoice["lines"]["data"]]
    assert "10 messages beyond the plan's included volume" in descriptions
    assert _overage_items(billing, subscribed["stripe_customer_id"]) == []  # billed: no longer pending
