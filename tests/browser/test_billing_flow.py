"""The billing page in a real browser, against localstripe: a billing user signs in, lands on the page
(axe-core: no critical violations), upgrades the plan and sees it applied, with Stripe's invoices listed."""

from __future__ import annotations

import dataclasses

import pytest

from tests.support.browser import critical_violations as critical
from tests.support.dashboard import sign_in, user_of
from tests.support.localstripe import card_payment_method


@pytest.fixture
def api_services(services, billing):
    return dataclasses.replace(services, billing=billing)


def test_a_billing_user_upgrades_in_the_browser(page, live_url, services, billing, account, db):
    billing.start_subscription(account["id"], "basic", card_payment_method(billing))
    sign_in(page, live_url, *user_of(services, account, "billing"))
    page.wait_for_url(f"{live_url}/dashboard/billing")
    assert "Basic" in page.locator("#current-plan").inner_text()
    assert "paid" in page.locator("#invoices").inner_text()
    assert critical(page) == []

    page.select_option("#plan", "scale")
    page.click("button:has-text('Change plan')")
    page.wait_for_url(f"{live_url}/dashboard/billing?done=upgraded")
    assert "Scale" in page.locator("#current-plan").inner_text()
    assert page.get_by_role("status").inner_text().startswith("Your plan is changed")
    assert db.execute("SELECT plan FROM accounts WHERE id = %s", (account["id"],)).fetchone()["plan"] == "scale"
    assert critical(page) == []


CARD = "4242424242424242"


def test_a_free_account_adds_a_card_with_stripe_js_then_subscribes(page, live_url, services, billing, account, db,
                                                                    localstripe):
    """The card goes from the page to Stripe (localstripe's fake Stripe.js) and never to Envoi: Envoi gets a
    SetupIntent id, makes its card the customer's default, and the upgrade then subscribes with it."""
    to_envoi, to_stripe = [], []

    def capture(request):
        body = request.post_data_buffer or b""
        seen = (request.url + " " + " ".join(request.headers.values())).encode() + body
        (to_envoi if request.url.startswith(live_url) else to_stripe).append((request.url, seen))

    page.on("request", capture)
    sign_in(page, live_url, *user_of(services, account, "admin"), then="/dashboard/billing")
    page.wait_for_url(f"{live_url}/dashboard/billing")
    assert page.locator("#card").inner_text() == "No card on file."

    page.click("#add-card")
    page.wait_for_selector("#card-element input[placeholder=number]")
    for field, value in (("number", CARD), ("exp_month", "12"), ("exp_year", "34"), ("cvc", "123"),
                         ("postal_code", "10001")):
        page.fill(f"#card-element input[placeholder={field}]", value)
    page.click("#save-card")
    page.wait_for_url(f"{live_url}/dashboard/billing?done=card")
    assert "ending 4242" in page.locator("#card").inner_text()
    assert critical(page) == []

    page.select_option("#plan", "basic")
    page.click("button:has-text('Change plan')")
    page.wait_for_url(f"{live_url}/dashboard/billing?done=subscribed")
    assert "Basic" in page.locator("#current-plan").inner_text()
    assert "paid" in page.locator("#invoices").inner_text()  # the first month, charged to the new card

    row = db.execute("SELECT plan, stripe_customer_id, stripe_subscription_id FROM accounts WHERE id = %s",
                     (account["id"],)).fetchone()
    assert row["plan"] == "basic" and row["stripe_subscription_id"]
    stripe = billing.gateway._client.v1
    [confirm] = [seen for url, seen in to_envoi if url.endswith("/dashboard/billing/card/confirm")]
    seti = stripe.setup_intents.retrieve(confirm.split(b"setup_intent=")[1].split(b"&")[0].decode())
    assert seti.status == "succeeded" and seti.customer == row["stripe_customer_id"]
    customer = stripe.customers.retrieve(row["stripe_customer_id"])
    assert customer.invoice_settings.default_payment_method == seti.payment_method
    subscription = stripe.subscriptions.retrieve(row["stripe_subscription_id"])
    assert subscription.status == "active" and subscription.customer == row["stripe_customer_id"]
    invoice = stripe.invoices.retrieve(subscription.latest_invoice)
    assert invoice.status == "paid"
    assert stripe.payment_intents.retrieve(invoice.payment_intent).payment_method == seti.payment_method

    # The card number went to Stripe only: no request to Envoi's origin carried it, in any form.
    assert any(CARD.encode() in seen for _, seen in to_stripe)
    assert to_envoi and not [url for url, seen in to_envoi if CARD.encode() in seen or b"4242 4242" in seen]
