"""The billing page against a real localstripe: the plan, usage and invoices as Stripe has them, a change of
plan (an upgrade at once, a downgrade at the period's end), the roles that may not, and tenant isolation."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from envoi.api.dashboard import security
from tests.support.localstripe import card_payment_method


@pytest.fixture
def api_services(services, billing):
    return dataclasses.replace(services, billing=billing)


@pytest.fixture
def subscribed(billing, account):
    return billing.start_subscription(account["id"], "basic", card_payment_method(billing))


def _plan(db, account_id):
    return db.execute("SELECT plan, pending_plan FROM accounts WHERE id = %s", (account_id,)).fetchone()


def test_the_page_shows_the_plan_usage_and_stripe_invoices(page_as, subscribed):
    html = page_as("billing").get("/dashboard/billing").text
    assert "You are on the <strong>Basic</strong> plan" in html and "15.00 USD a month" in html
    assert "0 of 3 messages included" in html
    past = html.split('id="invoices"')[1].split("</table>")[0]
    assert "paid" in past and "15.00 USD" in past  # the first month, charged to the test card
    upcoming = html.split('id="upcoming"')[1].split("</table>")[0]
    assert "15.00 USD" in upcoming


def test_upgrade_at_once_and_downgrade_at_the_period_end(page_as, subscribed, db):
    page = page_as("billing")
    resp = page.post("/dashboard/billing/plan", {"plan": "scale"})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("done=upgraded")
    assert _plan(db, subscribed["id"]) == {"plan": "scale", "pending_plan": None}
    assert "applies now" in page.get("/dashboard/billing", done="upgraded").text

    resp = page.post("/dashboard/billing/plan", {"plan": "foundation"})
    assert resp.headers["Location"].endswith("done=downgrade")
    assert _plan(db, subscribed["id"]) == {"plan": "scale", "pending_plan": "foundation"}
    assert 'It changes to <strong id="pending-plan">Foundation</strong>' in page.get("/dashboard/billing").text


def test_a_bad_plan_or_no_subscription_is_refused_and_changes_nothing(page_as, account, billing, db):
    page = page_as("admin")
    resp = page.post("/dashboard/billing/plan", {"plan": "scale"})
    assert resp.status_code == 400 and "needs a card: add one first" in resp.text
    assert _plan(db, account["id"]) == {"plan": "free", "pending_plan": None}
    assert "add one above" in page.get("/dashboard/billing").text

    billing.start_subscription(account["id"], "basic", card_payment_method(billing))
    resp = page.post("/dashboard/billing/plan", {"plan": "platinum"})
    assert resp.status_code == 400 and "Pick one of the plans listed" in resp.text
    assert _plan(db, account["id"]) == {"plan": "basic", "pending_plan": None}


@pytest.mark.parametrize("role", ["developer", "support", "analyst"])
def test_roles_without_manage_billing_may_not(page_as, subscribed, db, role):
    page = page_as(role)
    assert page.get("/dashboard/billing").status_code == 403
    assert page.post("/dashboard/billing/plan", {"plan": "scale"}).status_code == 403
    assert _plan(db, subscribed["id"]) == {"plan": "basic", "pending_plan": None}


def test_another_account_sees_only_its_own_billing(page_as, services, subscribed, db):
    other = services.accounts.create_account(f"other-{uuid.uuid4().hex[:6]}")
    page = page_as("admin", of=other)
    html = page.get("/dashboard/billing").text
    assert "<strong>Free</strong>" in html and "No invoices yet." in html and "15.00 USD a month" not in html
    assert page.post("/dashboard/billing/plan", {"plan": "scale"}).status_code == 400
    assert _plan(db, subscribed["id"]) == {"plan": "basic", "pending_plan": None}
    assert _plan(db, other["id"]) == {"plan": "free", "pending_plan": None}


def test_a_billing_user_lands_on_the_billing_page(page_as):
    page = page_as("billing")
    assert page.get("/dashboard").headers["location"] == "/dashboard/billing"
    assert 'href="/dashboard/billing" aria-current="page"' in page.get("/dashboard/billing").text


# card entry (Stripe.js) ------------------------------------------------------------------------------------
def _setup_intent(billing, account_id: int) -> str:
    """A SetupIntent for the account's customer, as the card page makes it; its id."""
    return billing.begin_card_setup(account_id)["client_secret"].split("_secret_")[0]


def _confirm_at_stripe(billing, seti: str, number: str = "4242424242424242") -> None:
    """What Stripe.js does in the browser: confirm the SetupIntent with a card."""
    billing.gateway._client.v1.setup_intents.confirm(seti, {"payment_method": card_payment_method(billing, number)})


def _default_payment_method(billing, db, account_id):
    customer = db.execute("SELECT stripe_customer_id FROM accounts WHERE id = %s", (account_id,)).fetchone()
    found = billing.gateway._client.v1.customers.retrieve(customer["stripe_customer_id"]).to_dict()
    return (found.get("invoice_settings") or {}).get("default_payment_method")


def test_the_card_page_loads_stripe_js_under_a_policy_that_allows_only_its_origin(page_as, account, db,
                                                                                   localstripe):
    page = page_as("billing")
    billing_page = page.get("/dashboard/billing")
    assert billing_page.headers["Content-Security-Policy"] == security.PAGE_POLICY
    assert 'action="/dashboard/billing/card"' in billing_page.text and "js.stripe.com" not in billing_page.text

    resp = page.post("/dashboard/billing/card")
    assert resp.status_code == 200
    assert f'<script src="{localstripe.js_url}"></script>' in resp.text
    assert 'data-client-secret="seti_' in resp.text and 'data-publishable-key="pk_test_envoi"' in resp.text
    origin = localstripe.api_base
    assert resp.headers["Content-Security-Policy"] == (
        f"default-src 'none'; script-src 'self' {origin}; style-src 'self'; img-src 'self' data:;"
        f" connect-src 'self' {origin}; frame-src 'self' {origin}; form-action 'self'; frame-ancestors 'none';"
        " base-uri 'none'")
    assert resp.headers["X-Frame-Options"] == "DENY"
    # The customer exists at Stripe now; Envoi stores its id only.
    assert db.execute("SELECT stripe_customer_id FROM accounts WHERE id = %s",
                      (account["id"],)).fetchone()["stripe_customer_id"].startswith("cus_")


def test_with_stripes_own_stripe_js_the_policy_allows_what_stripe_documents():
    assert security.with_stripe_js("https://js.stripe.com/v3/") == (
        "default-src 'none'; script-src 'self' https://js.stripe.com https://*.js.stripe.com; style-src 'self';"
        " img-src 'self' data:; connect-src 'self' https://js.stripe.com https://api.stripe.com;"
        " frame-src 'self' https://js.stripe.com https://*.js.stripe.com https://hooks.stripe.com;"
        " form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def test_a_confirmed_setup_intent_becomes_the_default_card(page_as, billing, account, db):
    page = page_as("admin")
    seti = _setup_intent(billing, account["id"])
    _confirm_at_stripe(billing, seti)
    resp = page.post("/dashboard/billing/card/confirm", {"setup_intent": seti})
    assert resp.status_code == 303 and resp.headers["Location"].endswith("done=card")
    pm = billing.gateway._client.v1.setup_intents.retrieve(seti).payment_method
    assert _default_payment_method(billing, db, account["id"]) == pm
    assert "ending 4242" in page.get("/dashboard/billing").text
    audit = db.execute("SELECT actor FROM audit_log WHERE account_id = %s AND action = 'billing.card'",
                       (account["id"],)).fetchone()
    assert audit["actor"].startswith("user:")


def test_another_customers_setup_intent_is_refused_and_changes_nothing(page_as, services, billing, account, db):
    _setup_intent(billing, account["id"])  # this account has a customer, no card yet
    other = services.accounts.create_account(f"other-{uuid.uuid4().hex[:6]}")
    theirs = _setup_intent(billing, other["id"])
    _confirm_at_stripe(billing, theirs)
    resp = page_as("admin").post("/dashboard/billing/card/confirm", {"setup_intent": theirs})
    assert resp.status_code == 404 and f"No card setup {theirs} for this account" in resp.text
    assert _default_payment_method(billing, db, account["id"]) is None
    assert _default_payment_method(billing, db, other["id"]) is None


def test_a_setup_intent_not_succeeded_is_refused_and_changes_nothing(page_as, billing, account, db):
    page = page_as("admin")
    seti = _setup_intent(billing, account["id"])  # Stripe.js never confirmed it
    resp = page.post("/dashboard/billing/card/confirm", {"setup_intent": seti})
    assert resp.status_code == 400 and "not complete (Stripe says requires_payment_method)" in resp.text
    declined = _setup_intent(billing, account["id"])
    with pytest.raises(Exception, match="declined"):
        _confirm_at_stripe(billing, declined, "4000000000000002")
    resp = page.post("/dashboard/billing/card/confirm", {"setup_intent": declined})
    assert resp.status_code == 400 and "Stripe says canceled" in resp.text
    assert _default_payment_method(billing, db, account["id"]) is None


@pytest.mark.parametrize("value", ["", "seti_../../customers", "pm_123", "seti_" + "a" * 200])
def test_a_malformed_setup_intent_id_never_reaches_stripe(page_as, billing, account, db, value):
    resp = page_as("admin").post("/dashboard/billing/card/confirm", {"setup_intent": value})
    assert resp.status_code == 400 and "must be a Stripe SetupIntent id" in resp.text
    assert db.execute("SELECT stripe_customer_id FROM accounts WHERE id = %s",
                      (account["id"],)).fetchone()["stripe_customer_id"] is None


@pytest.mark.parametrize("role", ["developer", "support", "analyst"])
def test_roles_without_manage_billing_may_not_enter_a_card(page_as, billing, account, db, role):
    page = page_as(role)
    seti = _setup_intent(billing, account["id"])
    _confirm_at_stripe(billing, seti)
    assert page.post("/dashboard/billing/card").status_code == 403
    assert page.post("/dashboard/billing/card/confirm", {"setup_intent": seti}).status_code == 403
    assert _default_payment_method(billing, db, account["id"]) is None


def test_without_a_card_csrf_token_nothing_changes(page_as, billing, account, db):
    seti = _setup_intent(billing, account["id"])
    _confirm_at_stripe(billing, seti)
    resp = page_as("admin").post("/dashboard/billing/card/confirm", {"setup_intent": seti}, csrf=False)
    assert resp.status_code == 403
    assert _default_payment_method(billing, db, account["id"]) is None


def test_an_unknown_setup_intent_is_refused_like_another_customers(page_as, billing, account, db):
    _setup_intent(billing, account["id"])
    resp = page_as("admin").post("/dashboard/billing/card/confirm", {"setup_intent": "seti_doesnotexist"})
    assert resp.status_code == 404 and "No card setup seti_doesnotexist for this account" in resp.text
    assert _default_payment_method(billing, db, account["id"]) is None
