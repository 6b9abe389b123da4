"""API keys in a real browser: sign in, create a key, see its secret once, use it against the live
server, delete it, and the next call with it is a 401. The people pages pass axe-core (no critical
violations) on the way."""

from __future__ import annotations

import requests

from tests.support.browser import critical_violations as critical
from tests.support.dashboard import sign_in, user_of


def test_a_key_made_in_the_browser_works_until_it_is_deleted(page, live_url, services, account, domain):
    sign_in(page, live_url, *user_of(services, account, "admin"))
    page.click("nav.side >> text=API keys")
    page.wait_for_url(f"{live_url}/dashboard/keys")
    assert critical(page) == []
    page.select_option("#role", "developer")
    page.fill("#description", "browser flow")
    page.click("button:has-text('Create key')")
    secret = page.locator("#new-key-secret").inner_text().strip()
    assert secret.startswith("key-") and page.locator("button[data-copy='#new-key-secret']").is_visible()
    assert critical(page) == []

    api = f"{live_url}/v4/domains"
    assert requests.get(api, auth=("api", secret), timeout=10).status_code == 200

    page.goto(f"{live_url}/dashboard/keys")
    assert secret not in page.content() and page.locator("#new-key-secret").count() == 0
    row = page.locator("tr", has_text="browser flow")
    page.once("dialog", lambda dialog: dialog.accept())  # the data-confirm question
    row.locator("button:has-text('Delete')").click()
    page.wait_for_url(f"{live_url}/dashboard/keys?done=deleted")
    assert page.locator("tr", has_text="browser flow").count() == 0
    assert requests.get(api, auth=("api", secret), timeout=10).status_code == 401

    services.subaccounts.create(account["id"], "browser sub")  # the account page lists it (a table)
    for path in ("/dashboard/users", "/dashboard/audit", "/dashboard/account"):
        page.goto(live_url + path)
        assert critical(page) == [], path
    assert page.locator("table", has_text="browser sub").is_visible()
    page.click("button:has-text('Set up two-factor')")
    assert page.locator(".qr svg.qr-code").is_visible()
    assert critical(page) == []
