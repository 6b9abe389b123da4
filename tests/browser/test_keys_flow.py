"""API keys in a real browser: sign in, create a key, see its secret once, use it against the live
server, delete it, and the next call with it is a 401. The people pages pass axe-core (no critical
violations) on the way."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import requests

from tests.support.dashboard import user_of

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(tempfile.gettempdir()) / "envoi-browser-screenshots"  # kept on failure


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    playwright = playwright_api.sync_playwright().start()
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    try:
        yield chromium
    finally:
        chromium.close()
        playwright.stop()


def critical(page) -> list[str]:
    """axe-core's critical accessibility violations on the page."""
    from axe_playwright_python.sync_playwright import Axe

    return [v["id"] for v in Axe().run(page).response["violations"] if v["impact"] == "critical"]


def test_a_key_made_in_the_browser_works_until_it_is_deleted(browser, live_url, services, account, domain, request):
    email, password = user_of(services, account, "admin")
    page = browser.new_page()
    try:
        page.goto(f"{live_url}/dashboard/login")
        page.fill("#email", email)
        page.fill("#password", password)
        page.click("button[type=submit]")
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

        for path in ("/dashboard/users", "/dashboard/audit", "/dashboard/account"):
            page.goto(live_url + path)
            assert critical(page) == [], path
        page.click("button:has-text('Set up two-factor')")
        assert page.locator(".qr svg.qr-code").is_visible()
        assert critical(page) == []
    except Exception:
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{request.node.name}.png"), full_page=True)
        raise
    finally:
        page.close()
