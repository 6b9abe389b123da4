"""The billing page against a real localstripe: the plan, usage and invoices as Stripe has them, a change of
plan (an upgrade at once, a downgrade at the period's end), the roles that may not, and tenant isolation."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

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
    assert resp.status_code == 400 and "needs a card" in resp.text
    assert _plan(db, account["id"]) == {"plan": "free", "pending_plan": None}
    assert "cannot take" in page.get("/dashboard/billing").text

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
