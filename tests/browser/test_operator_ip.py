"""An operator, in a real browser, assigns a dedicated IP to a customer's domain and sees it used: the
next message of that domain leaves from that IP (the sink sees the connection come from it) and the
IP's page lists the delivery. axe-core finds no critical or serious violation on the operator pages."""

from __future__ import annotations

import uuid

import pytest

from envoi import runtime
from tests.support.browser import axe_violations
from tests.support.dashboard import operator_of, sign_in
from tests.support.delivery import route, send
from tests.support.dns_server import DnsServer
from tests.support.relay import RelayThread, relay_settings

pytestmark = pytest.mark.usefixtures("clean_ips")


def grave_violations(page) -> list[str]:
    return [v["id"] for v in axe_violations(page, impact=("critical", "serious"))]


def test_an_operator_assigns_a_dedicated_ip_to_a_domain_and_sees_it_used(page, live_url, services, settings,
                                                                         account, domain, sink):
    for address, dedicated in (("127.0.0.2", True), ("127.0.0.3", False)):
        services.ips.add_ip("test", address, host=settings.relay_host, helo=f"o{address[-1]}.mta.test",
                            dedicated=dedicated)
    sign_in(page, live_url, *operator_of(services))
    page.wait_for_url(f"{live_url}/dashboard/operator")
    assert grave_violations(page) == []
    page.click("nav.side >> text=IPs and pools")
    page.select_option("#assign-domain-ip", "127.0.0.2")
    page.fill("#assign-domain-name", domain["name"])
    page.click("#assign-domain button[type=submit]")
    page.wait_for_selector("p.notice:has-text('The domain now sends over the IP.')")
    row = page.locator('tr[data-ip="127.0.0.2"]')
    assert domain["name"] in row.inner_text() and f"#{account['id']}" in row.inner_text()
    assert grave_violations(page) == []

    with DnsServer() as dns:
        rcpt_domain = f"{uuid.uuid4().hex[:8]}.dest.test"
        route(dns, rcpt_domain)
        egress = runtime.start_egress(services, refresh=0.2)
        try:
            with RelayThread(services, relay_settings(settings, sink, dns), egress=egress):
                message_id = send(services, account["id"], domain, f"watched@{rcpt_domain}")
                [received] = sink.wait_for(1, timeout=20)
        finally:
            egress.view.stop()
    assert received["peer"] == "127.0.0.2"  # it left from the IP assigned on the page

    page.click('tr[data-ip="127.0.0.2"] a')
    recent = page.locator("#recent-use")
    for _ in range(50):  # the delivered event is committed a moment after the sink has the message
        if f"watched@{rcpt_domain}" in recent.inner_text():
            break
        page.wait_for_timeout(200)
        page.reload()
    assert f"watched@{rcpt_domain}" in recent.inner_text() and message_id in recent.inner_text()
    assert "Last used" in recent.inner_text()
    assert grave_violations(page) == []
    page.click("nav.side >> text=Queues")
    assert page.locator("h2:has-text('Webhook backlog')").is_visible()
    assert grave_violations(page) == []
