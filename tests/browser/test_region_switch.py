"""The sign-in page in a real browser, two regions running: it names its region and switches to the
other's (like Mailgun's), and an email of the other region is sent there. No grave axe violation."""

from __future__ import annotations

import uuid

from tests.support.browser import axe_violations


def test_the_sign_in_page_switches_region_and_sends_the_other_regions_people_there(page, routed_regions):
    eu, us = routed_regions
    account = us.accounts.create_account(f"us-{uuid.uuid4().hex[:6]}")
    email = f"owner-{uuid.uuid4().hex[:6]}@people.test"
    _, token = us.users.invite(account["id"], email, "admin", actor="test")
    us.users.accept_invitation(token, "correct horse battery")
    eu_url, us_url = eu.settings.region_urls["eu"], eu.settings.region_urls["us"]

    page.goto(f"{eu_url}/dashboard/login")
    assert "Region: EU" in page.locator("nav.region-switch").inner_text()
    assert [v["id"] for v in axe_violations(page, impact=("critical", "serious"))] == []
    page.fill("#email", email)
    page.fill("#password", "not this region's password")
    page.click("main button[type=submit]")
    alert = page.locator("p.error[role=alert]")
    assert "This account is in the US region" in alert.inner_text()
    alert.locator("a").click()  # to the US region's sign-in page
    page.wait_for_url(f"{us_url}/dashboard/login")
    assert "Region: US" in page.locator("nav.region-switch").inner_text()
    page.click("nav.region-switch >> text=Switch to EU")
    page.wait_for_url(f"{eu_url}/dashboard/login")
