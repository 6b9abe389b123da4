"""The whole path with real processes: Mailgun SDK -> gunicorn API -> relay -> DNS -> DKIM -> sink MX."""

from __future__ import annotations

import email
import email.policy
import json
import re
import sys
import time
import urllib.request

import dkim
import pytest
from mailgun.client import Client

from tests.support.processes import Proc, envoi, free_port, http_ok, process_env, stop_all
from tests.support.relay import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(tmp_path, settings, services, account, domain, api_key, db):
    api_port, sink_smtp, sink_http, dns_port, relay_metrics, api_metrics = (free_port() for _ in range(6))
    zone = [
        ["inbox.test", "MX", "10 mx.inbox.test."],
        ["mx.inbox.test", "A", "127.0.0.1"],
        [f"{domain['dkim_selector']}._domainkey.{domain['name']}", "TXT",
         f"v=DKIM1; k=rsa; p={domain['dkim_public_key']}"],
    ]
    (tmp_path / "zone.json").write_text(json.dumps(zone))
    api_url = f"http://127.0.0.1:{api_port}"
    env = process_env(settings, ENVOI_PUBLIC_URL=api_url, ENVOI_DNS_RESOLVER=f"127.0.0.1:{dns_port}",
                      ENVOI_MX_PORT=sink_smtp)
    # Events before this id are other tests'; the relay's deliveries are the `delivered` rows after it.
    first_event = db.execute("SELECT coalesce(max(id), 0) AS id FROM events").fetchone()["id"]
    procs = []
    try:
        dns = Proc("dns", [sys.executable, "-m", "tests.support.dns_server", "--port", str(dns_port),
                           "--zone", str(tmp_path / "zone.json")], env, tmp_path)
        procs.append(dns)
        sink = Proc("sink", envoi("sink", "--smtp", f"127.0.0.1:{sink_smtp}", "--http", f"127.0.0.1:{sink_http}"),
                    env, tmp_path)
        procs.append(sink)
        api = Proc("api", envoi("api", "--bind", f"127.0.0.1:{api_port}", "--workers", "2",
                                "--metrics-bind", f"127.0.0.1:{api_metrics}"), env, tmp_path)
        procs.append(api)
        relay = Proc("relay", envoi("relay", "--metrics-port", str(relay_metrics)), env, tmp_path)
        procs.append(relay)
        sink.wait_ready(lambda: http_ok(f"http://127.0.0.1:{sink_http}/stats"))
        api.wait_ready(lambda: http_ok(f"{api_url}/healthz"))
        dns.wait_ready(lambda: "listening" in dns.output())
        yield {"api_url": api_url, "sink_url": f"http://127.0.0.1:{sink_http}", "domain": domain,
               "key": api_key, "dkim_txt": zone[2][2], "procs": procs, "first_event": first_event,
               "relay_metrics": f"http://127.0.0.1:{relay_metrics}/metrics",
               "api_metrics": f"http://127.0.0.1:{api_metrics}/metrics"}
    finally:
        stop_all(reversed(procs))


def sink_messages(sink_url: str) -> list[dict]:
    with urllib.request.urlopen(f"{sink_url}/messages") as resp:
        return json.load(resp)["items"]


def metric(text: str, name: str) -> float:
    return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))


def test_mailgun_sdk_send_is_delivered_signed_and_logged(stack, db):
    domain = stack["domain"]["name"]
    client = Client(auth=("api", stack["key"]), api_url=stack["api_url"])
    response = client.messages.create(
        domain=domain,
        data={"from": f"Envoi Test <hello@{domain}>", "to": "Reader <reader@inbox.test>",
              "subject": "End to end", "text": "Plain body", "html": "<p>HTML body</p>", "o:tag": "e2e",
              "h:X-Campaign": "launch"},
        files=[("attachment", ("report.csv", b"a,b\n1,2\n"))],
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"] == "Queued. Thank you." and body["id"].startswith("<")
    message_id = body["id"].strip("<>")

    deadline = time.monotonic() + 30
    received = []
    while time.monotonic() < deadline and not received:
        received = [m for m in sink_messages(stack["sink_url"]) if message_id in m["data"]]
        time.sleep(0.2)
    assert received, "the sink never received the message:\n" + "\n".join(p.output() for p in stack["procs"])
    raw = received[0]["data"].encode("utf-8", "surrogateescape")
    assert received[0]["rcpt_tos"] == ["reader@inbox.test"]

    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "End to end" and msg["X-Campaign"] == "launch"
    assert msg["To"] == "Reader <reader@inbox.test>" and msg["Message-ID"] == f"<{message_id}>"
    assert msg.get_body(("plain",)).get_content().strip() == "Plain body"
    assert msg.get_body(("html",)).get_content().strip() == "<p>HTML body</p>"
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "report.csv" and attachment.get_content() in (b"a,b\n1,2\n", "a,b\n1,2\n")

    txt = stack["dkim_txt"].encode()
    assert dkim.verify(raw, dnsfunc=lambda name, timeout=5: txt), "DKIM signature does not verify"
    assert b"d=" + domain.encode() in raw.split(b"\r\n\r\n")[0]

    deadline = time.monotonic() + 15
    events = []
    while time.monotonic() < deadline:
        resp = client.events.get(domain=domain, filters={"message-id": message_id, "ascending": "yes"})
        events = [item["event"] for item in resp.json()["items"]]
        if "delivered" in events:
            break
        time.sleep(0.3)
    assert events == ["accepted", "delivered"]
    delivered = resp.json()["items"][1]
    assert delivered["delivery-status"]["code"] == 250
    assert delivered["delivery-status"]["mx-host"] == "mx.inbox.test"
    assert delivered["recipient"] == "reader@inbox.test" and delivered["tags"] == ["e2e"]

    # metrics: the API counted the accept (whichever gunicorn worker answers), the relay the delivery
    api_metrics = urllib.request.urlopen(stack["api_metrics"]).read().decode()
    assert 'envoi_messages_accepted_total{method="http"} 1.0' in api_metrics
    # The fresh relay also delivers whatever earlier tests left queued (to inbox.test, say), so its counters
    # must equal the deliveries recorded since it started, not 1.
    def relay_counted_every_delivery():
        text = urllib.request.urlopen(stack["relay_metrics"]).read().decode()
        recorded = db.execute("SELECT count(*) AS n FROM events WHERE id > %s AND event = 'delivered'",
                              (stack["first_event"],)).fetchone()["n"]
        counted = (metric(text, "envoi_messages_delivered_total"),
                   metric(text, "envoi_accept_to_delivered_seconds_count"))
        return recorded >= 1 and counted == (recorded, recorded)

    wait_until(relay_counted_every_delivery, timeout=10)


def test_api_removes_the_metrics_directory_it_made_and_keeps_a_given_one(tmp_path, settings, services):
    port = free_port()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    metrics_port = free_port()
    given = tmp_path / "given-metrics"
    for name, extra in (("own", {"TMPDIR": str(scratch)}),
                        ("given", {"TMPDIR": str(scratch), "PROMETHEUS_MULTIPROC_DIR": str(given)})):
        api = Proc(f"api-{name}", envoi("api", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                                        "--metrics-bind", f"127.0.0.1:{metrics_port}"),
                   process_env(settings, **extra), tmp_path)
        try:
            api.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"))
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read()
            made = given if name == "given" else next(scratch.glob("envoi-metrics-*"))
            assert any(made.glob("*.db"))  # the workers write their values there
        finally:
            api.stop()
        time.sleep(0.2)
        assert made.exists() == (name == "given")
    assert not any(scratch.iterdir())
