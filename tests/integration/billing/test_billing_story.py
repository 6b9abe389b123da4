"""Issue 14's whole story in one test, against a real localstripe and a region with billing on: sign up →
free plan → over the daily cap refused → upgrade with a test card → send past the included volume → the
overage on the upcoming invoice, once, even after a crash mid-push → payment fails → suspended after the
grace → card fixed, invoice paid → sending again."""

from __future__ import annotations

import urllib.request
import uuid
from urllib.parse import urlencode

import pytest
from falcon import testing

from envoi import runtime
from envoi.api.app import create_app
from envoi.billing.stripe_gateway import StripeGateway
from tests.support.api import accepted, send_form
from tests.support.localstripe import card_payment_method, make_billing, past_the_second_of

NEEDS_3DS = "4000002500003155"  # its charges wait for 3-D Secure, which the story then fails
PLANS = """
default = "free"
[plans.free]
included_per_month = 3000
daily_cap = 100
[plans.basic]
price_per_month = 1500
included_per_month = 150
overage_per_1000 = 180
"""


class Crash(Exception):
    pass


class DiesAfterStripeReplied(StripeGateway):
    def create_invoice_item(self, *args, **kwargs):
        super().create_invoice_item(*args, **kwargs)
        raise Crash("the process died before recording Stripe's reply")


@pytest.fixture(scope="module")
def region(settings, localstripe, tmp_path_factory):
    plans = tmp_path_factory.mktemp("plans") / "plans.toml"
    plans.write_text(PLANS)
    services = runtime.build(settings.replace(
        billing=True, billing_plans=str(plans), stripe_secret_key=localstripe.secret_key,
        stripe_api_base=localstripe.api_base, stripe_webhook_secret=localstripe.webhook_secret), pool_size=4)
    services.billing.sync_plans()
    yield services
    services.close()


def to(n: int, start: int = 0) -> str:
    return ",".join(f"r{i}@dest.test" for i in range(start, start + n))


def stored(db, domain_id: int) -> int:
    return db.execute("SELECT count(*) AS n FROM recipients WHERE domain_id = %s", (domain_id,)).fetchone()["n"]


def deliver_webhook(client, hook) -> dict:
    resp = client.simulate_post("/v1/billing/stripe/webhook", body=hook.body, headers={
        "Content-Type": "application/json", "Stripe-Signature": hook.signature})
    assert resp.status_code == 200, resp.text
    return resp.json


def test_sign_up_to_overage_to_dunning_and_back(region, localstripe, db):
    # Sign up: a new account is on the free plan.
    account = region.accounts.create_account(f"story-{uuid.uuid4().hex[:6]}")
    domain = region.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.example.test", dkim_key_size=1024,
                                        verified=True)
    _, key = region.accounts.create_key(account["id"], "admin")
    client = testing.TestClient(create_app(region.settings, region))
    try:
        accepted(send_form(client, key, domain, to=to(100)))  # the whole daily cap
        refused = send_form(client, key, domain, to=to(1, 100))
        assert refused.status_code == 420 and "100 messages a day" in refused.json["message"]
        assert stored(db, domain["id"]) == 100  # nothing of the refused message

        # Upgrade with a test card: the plan applies at once, in every process.
        row = region.billing.start_subscription(account["id"], "basic", card_payment_method(region.billing))
        customer, subscription = row["stripe_customer_id"], row["stripe_subscription_id"]
        assert region.accounts.authenticate_key(key).plan == "basic"
        for n in range(3):  # past the daily cap and past the included volume
            accepted(send_form(client, key, domain, to=to(40, 200 + 40 * n)))

        # The overage goes to Stripe once, even when the process dies after Stripe replied.
        report = region.billing.reconcile(account["id"])
        overage = report["overage_units"]
        assert overage == report["accepted"] - 150 > 0
        dying = make_billing(region, localstripe, region.plans, gateway_class=DiesAfterStripeReplied)
        with pytest.raises(Crash):
            dying.push_overage(account["id"])
        region.billing.push_overage(account["id"])  # the retry finds Stripe's item by its key
        region.billing.push_overage(account["id"])
        report = region.billing.reconcile(account["id"])
        assert (report["envoi_pushed_units"], report["stripe_units"], report["envoi_unconfirmed_units"]) == (
            overage, overage, 0)
        upcoming = region.billing.gateway.upcoming_invoice(customer, subscription)
        lines = [line["description"] for line in upcoming["lines"]["data"]]
        assert lines.count(f"{overage} messages beyond the plan's included volume") == 1

        # The renewal's payment fails (the bank refuses 3-D Secure): past due, then suspended after the grace.
        first = localstripe.webhooks.wait_for("invoice.payment_succeeded",
                                              lambda e: e["data"]["object"].get("customer") == customer)
        past_the_second_of(first)  # the failure is a newer event than the first invoice's payment
        region.billing.gateway.set_payment_method(customer, card_payment_method(region.billing, NEEDS_3DS))
        invoice = region.billing.gateway.pay_invoice(region.billing.gateway.create_invoice(customer, subscription)["id"])
        assert invoice["status"] == "open"
        _fail_authentication(localstripe, region.billing, invoice["payment_intent"])
        failed = localstripe.webhooks.wait_for("invoice.payment_failed",
                                               lambda e: e["data"]["object"].get("customer") == customer)
        assert deliver_webhook(client, failed)["result"] == "applied"
        accepted(send_form(client, key, domain))  # within the grace it still sends
        db.execute("UPDATE accounts SET grace_until = now() - interval '1 minute' WHERE id = %s", (account["id"],))
        region.billing.sweep_dunning()
        refused = send_form(client, key, domain)
        assert refused.status_code == 403 and "suspended" in refused.json["message"]

        # The card is fixed and the invoice paid: reinstated, sending again.
        past_the_second_of(failed)
        region.billing.gateway.set_payment_method(customer, card_payment_method(region.billing))
        assert region.billing.gateway.pay_invoice(invoice["id"])["status"] == "paid"
        paid = localstripe.webhooks.wait_for(
            "invoice.payment_succeeded",
            lambda e: e["data"]["object"].get("customer") == customer and e["data"]["object"]["id"] == invoice["id"])
        assert deliver_webhook(client, paid)["result"] == "applied"
        accepted(send_form(client, key, domain))
        assert db.execute("SELECT state FROM accounts WHERE id = %s", (account["id"],)).fetchone()["state"] == "active"
    finally:
        db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'",
                   (domain["id"],))


def _fail_authentication(localstripe, billing, payment_intent: str) -> None:
    """The cardholder fails the 3-D Secure challenge (localstripe's endpoint for it)."""
    secret = billing.gateway._client.v1.payment_intents.retrieve(payment_intent).client_secret
    body = urlencode({"client_secret": secret, "success": "false"}).encode()
    request = urllib.request.Request(f"{localstripe.api_base}/v1/payment_intents/{payment_intent}/_authenticate",
                                     data=body, headers={"Authorization": f"Bearer {localstripe.secret_key}"})
    urllib.request.urlopen(request, timeout=5).close()
