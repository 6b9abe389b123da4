"""The dashboard as a customer uses it, in Chromium: sign in, add a domain and see the DNS records to
publish, send through the API and watch the message arrive in the live tail, open its page and the
delivery trace (the real relay delivers to a loopback sink), add a suppression, and see the webhook the
delivery fired in the attempts log. axe-core finds no critical violation on any page on the way.

With ENVOI_SCREENSHOTS=<folder> set, the run also saves a screenshot of each main page there (this is
how docs/screenshots/ is made: see the README)."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from pathlib import Path

import pytest
import requests

from envoi import runtime
from envoi.webhooks.dispatch import Dispatcher
from envoi.webhooks.service import signature
from tests.support.browser import axe_violations
from tests.support.dashboard import operator_of, sign_in, user_of
from tests.support.delivery import route
from tests.support.dns_server import DnsServer
from tests.support.relay import RelayThread, relay_settings
from tests.support.webhook_receiver import Receiver

SHOTS = os.environ.get("ENVOI_SCREENSHOTS")


@pytest.fixture(scope="module")
def api_services(settings):
    """Services whose webhook SSRF guard lets the loopback receiver through (as `envoi up` allows)."""
    svc = runtime.build(settings.replace(webhook_allow=("127.0.0.1/32",), webhook_timeout=5), pool_size=4)
    yield svc
    svc.close()


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def shot(page, name: str) -> None:
    assert axe_violations(page) == [], f"critical accessibility violations on {page.url}"
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=False)


def test_a_customer_day_in_the_dashboard(page, live_url, api_services, settings, account, sink, receiver):
    services = api_services
    domain = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.example.test",
                                          dkim_key_size=1024, verified=True)
    _, key = services.accounts.create_key(account["id"], "admin")
    sign_in(page, live_url, *user_of(services, account, "admin"))
    page.wait_for_url(f"{live_url}/dashboard/overview")

    # Add a domain; its page lists the records to publish.
    page.click("nav.side >> text=Domains")
    new_domain = f"news-{uuid.uuid4().hex[:6]}.example.test"
    page.fill("#name", new_domain)
    page.click("button:has-text('Add domain')")
    page.wait_for_url(f"**/dashboard/domains/{new_domain}**")
    records = page.locator("table[aria-label='Sending records']").inner_text()
    assert "TXT" in records and "v=spf1" in records and "._domainkey." in records
    shot(page, "domain")

    # A webhook for deliveries, set on the webhooks page.
    page.goto(f"{live_url}/dashboard/webhooks?domain={domain['name']}")
    page.fill("#url-delivered-0", receiver.url("/delivered"))
    page.click("#set-delivered button[type=submit]")
    page.wait_for_selector("p.notice")

    # The logs page with the live tail on; a message sent through the API appears without a reload.
    page.goto(f"{live_url}/dashboard/logs?domain={domain['name']}")
    page.click("#live-toggle")
    page.wait_for_selector("#live-status:has-text('Live')", timeout=10_000)
    with DnsServer() as dns:
        route(dns, "dest.test")
        with RelayThread(services, relay_settings(settings, sink, dns), suppressions=services.suppressions):
            resp = requests.post(f"{live_url}/v3/{domain['name']}/messages", auth=("api", key), timeout=10, data={
                "from": f"Shop <shop@{domain['name']}>", "to": "reader@dest.test", "subject": "Your receipt",
                "text": "Thanks!", "html": "<p>Thanks for your <b>order</b></p>", "o:tag": "receipts"})
            assert resp.status_code == 200
            message_id = resp.json()["id"].strip("<>")
            page.locator("#events tbody tr.live", has_text="delivered").first.wait_for(timeout=20_000)
            assert sink.wait_for(1, timeout=10)[0]["rcpt_tos"] == ["reader@dest.test"]
    assert page.locator("#events tbody tr.live", has_text="Your receipt").count() >= 2  # accepted, delivered
    shot(page, "logs")

    # The message page: the trace with the MX and the reply, the HTML in its sandbox.
    page.locator("#events tbody tr.live", has_text="delivered").first.locator("a").first.click()
    page.wait_for_selector("h2:has-text('Delivery')")
    trace = page.inner_text("section.recipient")
    assert "reader@dest.test" in trace and "mx.dest.test" in trace and "250" in trace
    assert page.frame_locator("iframe.mail").locator("b").inner_text(timeout=5_000) == "order"
    assert page.get_attribute("iframe.mail", "sandbox") == ""
    shot(page, "message")

    # A suppression added by hand.
    page.goto(f"{live_url}/dashboard/suppressions?domain={domain['name']}&kind=unsubscribes")
    page.fill("#add-address", "left@dest.test")
    page.click("form:has(#add-address) button:has-text('Add')")
    page.wait_for_selector('tr[data-entry="left@dest.test"]')
    assert services.suppressions.get(domain, "unsubscribes", "left@dest.test")["address"] == "left@dest.test"
    shot(page, "suppressions")

    # The delivery fired the webhook (the dispatcher, run here in-process, in a thread of its own: Playwright's
    # sync API holds this one's event loop); its attempt is listed.
    for _ in range(50):
        drain = threading.Thread(target=lambda: asyncio.run(Dispatcher(services.webhooks).drain()))
        drain.start()
        drain.join()
        if receiver.requests:
            break
        page.wait_for_timeout(100)
    payload = receiver.requests[0]["payload"]
    assert payload["event-data"]["event"] == "delivered"
    signed = payload["signature"]
    assert signed["signature"] == signature(services.webhooks.signing_key(account["id"]), signed["timestamp"],
                                            signed["token"])  # Mailgun's HMAC with the account's key
    page.goto(f"{live_url}/dashboard/webhooks?domain={domain['name']}")
    attempt = page.locator("tr[data-attempt]").first
    assert "delivered" in attempt.inner_text() and "200" in attempt.inner_text()
    attempt.locator("summary").click()  # the request body, on expand
    assert message_id in attempt.locator("details pre").inner_text()
    shot(page, "webhooks")

    page.goto(f"{live_url}/dashboard/overview")  # the message counts now (the stats read unfolded counts too)
    assert page.inner_text('[data-total="accepted"]') == "1" and page.inner_text('[data-total="delivered"]') == "1"
    shot(page, "overview")
    for path, name in (("/dashboard/keys", "keys"), ("/dashboard/users", "users"), ("/dashboard/audit", "audit"),
                       ("/dashboard/account", "account")):
        page.goto(live_url + path)
        shot(page, name)


def test_operator_pages_for_screenshots_and_accessibility(page, live_url, api_services):
    sign_in(page, live_url, *operator_of(api_services))
    for path, name in (("/dashboard/operator", "operator-accounts"), ("/dashboard/operator/ips", "operator-ips"),
                       ("/dashboard/operator/queues", "operator-queues")):
        page.goto(live_url + path)
        assert page.locator("h1").count() == 1
        shot(page, name)
