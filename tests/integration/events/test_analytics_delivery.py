"""Analytics of real mail: messages sent through intake, delivered by the relay to the sink, opened and
clicked through their tracking links; the metrics API (official SDK) and the events API count the same,
by domain, by tag and by day, and the aggregates show the devices the opens came from."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

import pytest
import requests
from mailgun.client import Client

from envoi.api.app import create_app
from tests.conftest import basic
from tests.support.delivery import route, send
from tests.support.dns_server import DnsServer
from tests.support.events import AppServer
from tests.support.relay import RelayThread, relay_settings, wait_until

IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.0 Mobile/15E148 Safari/604.1")
DESKTOP = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
           "Safari/537.36")
HTML = '<html><body><p>Hi</p><a href="https://shop.example/item">buy</a></body></html>'
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def relay(services, settings, sink, domain):
    """The relay delivering dest.test and gmail.com (on the test DNS server: loopback only) to the sink."""
    with DnsServer() as dns:
        route(dns, "dest.test")
        route(dns, "gmail.com")
        with RelayThread(services, relay_settings(settings, sink, dns), suppressions=services.suppressions) as thread:
            yield thread


def test_metrics_of_delivered_opened_and_clicked_mail_equal_the_events(client, settings, services, account, domain,
                                                                      api_key, db, sink, relay):
    for kind in ("open", "click"):
        resp = client.simulate_put(f"/v3/domains/{domain['name']}/tracking/{kind}", body=urlencode({"active": "yes"}),
                                   headers={**FORM, **basic(api_key)})
        assert resp.status_code == 200
    began = time.time()
    sent = {
        send(services, account["id"], domain, "ann@dest.test, bob@gmail.com", html=HTML, o_tag="spring"): 2,
        send(services, account["id"], domain, "cy@gmail.com", html=HTML, o_tag="summer"): 1,
        send(services, account["id"], domain, "dee@dest.test", html=HTML): 1,
    }
    wait_until(lambda: db.execute("SELECT count(*) AS n FROM events WHERE domain_id = %s AND event = 'delivered'",
                                  (domain["id"],)).fetchone()["n"] == 4, timeout=30)
    received = {m["rcpt_tos"][0]: m["data"] for m in sink.messages() if any(mid in m["data"] for mid in sent)}
    assert set(received) == {"ann@dest.test", "bob@gmail.com", "cy@gmail.com", "dee@dest.test"}

    def links(rcpt):
        body = received[rcpt].replace("=\r\n", "").replace("=\n", "").replace("=3D", "=")
        pixel = re.search(r'(https?://[^/"\s]+/o/[^"\s]+)', body).group(1)  # on the domain's tracking host
        click = re.search(r'(https?://[^/"\s]+/c/[^"\s]+)', body).group(1)
        return urlsplit(pixel).path, urlsplit(click).path

    hits = {"ann@dest.test": (IPHONE, 2, 1), "bob@gmail.com": (DESKTOP, 1, 0), "cy@gmail.com": (IPHONE, 1, 1)}
    for rcpt, (agent, opens, clicks) in hits.items():
        pixel, click = links(rcpt)
        for _ in range(opens):
            assert client.simulate_get(pixel, headers={"User-Agent": agent}).status_code == 200
        for _ in range(clicks):
            assert client.simulate_get(click, headers={"User-Agent": agent}).status_code == 302

    with AppServer(create_app(settings, services)) as srv:
        sdk = Client(auth=("api", api_key), api_url=srv.url)

        def metrics(dimensions, **extra):
            resp = sdk.analytics_metrics.create(data={
                "start": datetime.fromtimestamp(began - 60, UTC).strftime("%a, %d %b %Y %H:%M:%S +0000"),
                "resolution": "day", "dimensions": dimensions, "include_aggregates": True,
                "metrics": ["accepted_count", "delivered_count", "opened_count", "unique_opened_count",
                            "clicked_count", "unique_clicked_count"], **extra})
            assert resp.status_code == 200, resp.text
            return resp.json()

        def events_api(event, **filters):
            resp = sdk.events.get(domain=domain["name"], filters={
                "event": event, "begin": str(began - 60), "ascending": "yes", "limit": 300, **filters})
            return resp.json()["items"]

        counted = {e: len(events_api(e)) for e in ("accepted", "delivered", "opened", "clicked")}
        assert counted == {"accepted": 4, "delivered": 4, "opened": 4, "clicked": 2}
        # by domain: metrics -> events, and the aggregate
        by_domain = metrics(["domain"])
        [item] = by_domain["items"]
        assert item["dimensions"] == [{"dimension": "domain", "value": domain["name"], "display_value": domain["name"]}]
        got = {e: item["metrics"][f"{e}_count"] for e in counted}
        assert got == counted == {e: by_domain["aggregates"]["metrics"][f"{e}_count"] for e in counted}
        assert item["metrics"]["unique_opened_count"] == 3 and item["metrics"]["unique_clicked_count"] == 2
        # by tag: each tag's metrics equal the events API filtered on that tag, and back
        by_tag = {i["dimensions"][0]["value"]: i["metrics"] for i in metrics(["tag"])["items"]}
        assert set(by_tag) == {"spring", "summer"}
        for tag, metric in by_tag.items():
            for e in counted:
                assert metric[f"{e}_count"] == len(events_api(e, tags=tag)), (tag, e)
        # by day: the days' sums equal the events API's counts
        by_day = metrics(["time"])["items"]
        for e in counted:
            assert sum(i["metrics"][f"{e}_count"] for i in by_day) == counted[e]
        # the rollup (no unique counts) and the events table (a recipient-domain split) agree
        by_rcpt = metrics(["recipient_domain"], metrics=["accepted_count", "delivered_count", "opened_count"])
        rcpt_domains = {i["dimensions"][0]["value"]: i["metrics"] for i in by_rcpt["items"]}
        assert rcpt_domains["gmail.com"] == {"accepted_count": 2, "delivered_count": 2, "opened_count": 2}
        assert rcpt_domains["dest.test"] == {"accepted_count": 2, "delivered_count": 2, "opened_count": 2}
        # devices from the user agents of the opens and clicks
        devices = sdk.tags_stats_aggregates_devices.get(domain=domain["name"], tag_name="spring").json()["devices"]
        assert devices["mobile"]["opened"] == 2 and devices["desktop"]["opened"] == 1
        assert devices["mobile"]["unique_opened"] == 1 and devices["mobile"]["clicked"] == 1
        providers = requests.get(f"{srv.url}/v3/{domain['name']}/aggregates/providers", headers=basic(api_key),
                                 timeout=10).json()["providers"]
        assert providers["gmail.com"]["delivered"] == 2 and providers["gmail.com"]["unique_opened"] == 2
