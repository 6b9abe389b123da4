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
