"""A domain's connection settings (PUT /v3/domains/{d}/connection) are its messages' delivery defaults;
a message's o:require-tls overrides them (Mailgun: "the Message level setting will OVERRIDE the Domain
level setting"). Real relay, a plain-text sink (no STARTTLS), the test DNS server."""

from __future__ import annotations

from mailgun.client import Client

from envoi.dev.sink import Sink
from tests.support.delivery import events_of, send
from tests.support.relay import RelayThread, relay_settings, wait_until


def final(db, message_id, timeout=15):
    return wait_until(lambda: (e := events_of(db, message_id)) and e[-1]["severity"] != "temporary"
                      and e[-1]["event"] != "accepted" and e, timeout)


def test_require_tls_set_on_the_domain_refuses_a_plain_text_server(services, settings, account, domain, api_key,
                                                                    db, dns, server):
    sdk = Client(auth=("api", api_key), api_url=server.url)
    resp = sdk.domains_connection.put(domain=domain["name"], data={"require_tls": "true"})
    assert resp.status_code == 200, resp.text
    dns.add("plain-conn.test", "MX", "10 mx.plain-conn.test.")
    dns.add("mx.plain-conn.test", "A", "127.0.0.1")
    with Sink() as sink, RelayThread(services, relay_settings(settings, sink, dns)):
        by_default = send(services, account["id"], domain, "a@plain-conn.test")
        overridden = send(services, account["id"], domain, "b@plain-conn.test", **{"o:require-tls": "no"})
        failed, delivered = final(db, by_default)[-1], final(db, overridden)[-1]
    assert failed["event"] == "failed" and failed["severity"] == "permanent"
    assert failed["data"]["delivery-status"]["enhanced-code"] == "5.7.10"
    assert delivered["event"] == "delivered"
    assert [m["rcpt_tos"] for m in sink.messages()] == [["b@plain-conn.test"]]
