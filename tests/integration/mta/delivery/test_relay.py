"""The relay against a real sink MX and a real DNS server on loopback."""

from __future__ import annotations

import time

import dkim
import pytest

from envoi.dev.sink import Sink
from tests.support.delivery import events_of, route, send
from tests.support.dns_server import DnsServer
from tests.support.relay import RelayThread, relay_settings, wait_until


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelining"])
def sink(request):
    """Every relay test against a sink that takes commands one at a time and one that offers
    PIPELINING (as most MX hosts do), where MAIL, RCPTs and DATA go in one write."""
    with Sink(pipelining=request.param) as s:
        yield s


@pytest.fixture
def dns(domain):
    with DnsServer() as server:
        server.add(domain["name"] + "", "TXT", "v=spf1 -all")
        server.add(f"{domain['dkim_selector']}._domainkey.{domain['name']}", "TXT",
                   f"v=DKIM1; k=rsa; p={domain['dkim_public_key']}")
        yield server


@pytest.fixture
def relay(services, settings, sink, dns):
    relay_cfg = relay_settings(settings, sink, dns)
    with RelayThread(services, relay_cfg) as thread:
        yield thread


def test_delivers_signed_message_and_records_events(services, account, domain, db, sink, dns, relay):
    route(dns, "dest.test")
    message_id = send(services, account["id"], domain, "rcpt@dest.test")
    [received] = sink.wait_for(1)
    assert received["rcpt_tos"] == ["rcpt@dest.test"]
    raw = received["data"].encode("utf-8", "surrogateescape")
    assert f"Message-ID: <{message_id}>".encode() in raw

    def dnsfunc(name, timeout=5):
        assert name == f"{domain['dkim_selector']}._domainkey.{domain['name']}.".encode()
        return f"v=DKIM1; k=rsa; p={domain['dkim_public_key']}".encode()

    assert dkim.verify(raw, dnsfunc=dnsfunc)
    events = wait_until(lambda: (e := events_of(db, message_id)) and len(e) == 2 and e)
    assert [e["event"] for e in events] == ["accepted", "delivered"]
    status = events[1]["data"]["delivery-status"]
    assert status["code"] == 250 and status["attempt-no"] == 1 and status["mx-host"] == "mx.dest.test"
    assert status["tls"] is False
    row = db.execute("SELECT status, attempts FROM recipients WHERE address = 'rcpt@dest.test'"
                     " AND message_pk = (SELECT id FROM messages WHERE message_id = %s)", (message_id,)).fetchone()
    assert row == {"status": "delivered", "attempts": 1}


def test_lines_starting_with_a_dot_arrive_intact_and_the_signature_holds(services, account, domain, db, sink,
                                                                         dns, relay):
    route(dns, "dest.test")
    body = ".starts with a dot\r\n..two dots\r\n.\r\nmiddle\r\n."
    message_id = send(services, account["id"], domain, "dots@dest.test", text=body)
    [received] = sink.wait_for(1)
    raw = received["data"].encode("utf-8", "surrogateescape")
    assert f"Message-ID: <{message_id}>".encode() in raw
    assert b"\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nmiddle\r\n.\r\n" in raw.replace(b"\n", b"\r\n").replace(
        b"\r\r\n", b"\r\n")  # the sink un-stuffs: what arrives is the body as sent

    def dnsfunc(name, timeout=5):
        return f"v=DKIM1; k=rsa; p={domain['dkim_public_key']}".encode()

    assert dkim.verify(raw, dnsfunc=dnsfunc)


def test_temporary_failure_is_retried_then_delivered(services, account, domain, db, sink, dns, relay):
    route(dns, "retry.test")
    sink.set_script({"data": ["451 4.3.0 Try again later"]})
    message_id = send(services, account["id"], domain, "r@retry.test")
    events = wait_until(lambda: (e := events_of(db, message_id)) and e[-1]["event"] == "delivered" and e, 20)
    assert [(e["event"], e["severity"]) for e in events] == [
        ("accepted", None), ("failed", "temporary"), ("delivered", None)]
    assert events[1]["data"]["delivery-status"]["code"] == 451
    assert events[2]["data"]["delivery-status"]["attempt-no"] == 2
    assert len(sink.messages()) == 1


def test_permanent_failure_is_not_retried(services, account, domain, db, sink, dns, relay):
    route(dns, "hard.test")
    sink.set_script({"rcpt": {"gone@hard.test": "550 5.1.1 No such user"}})
    message_id = send(services, account["id"], domain, "gone@hard.test")
    events = wait_until(lambda: (e := events_of(db, message_id)) and len(e) == 2 and e)
    failed = events[1]
    assert failed["event"] == "failed" and failed["severity"] == "permanent"
    assert failed["data"]["reason"] == "bounce"
    assert failed["data"]["delivery-status"]["enhanced-code"] == "5.1.1"
    assert failed["data"]["delivery-status"]["bounce-class"] == "invalid-recipient"
    time.sleep(2.5)  # longer than the retry schedule: nothing more happens
    assert len(events_of(db, message_id)) == 2 and sink.messages() == []


def test_null_mx_fails_without_connecting(services, account, domain, db, sink, dns, relay):
    dns.add("nullmx.test", "MX", "0 .")
    message_id = send(services, account["id"], domain, "x@nullmx.test")
    events = wait_until(lambda: (e := events_of(db, message_id)) and len(e) == 2 and e)
    assert events[1]["severity"] == "permanent"
    assert events[1]["data"]["delivery-status"]["enhanced-code"] == "5.1.10"
    assert sink.stats()["attempts"] == 0


def test_dns_servfail_defers(services, account, domain, db, sink, dns, relay):
    dns.servfail("broken.test")
    message_id = send(services, account["id"], domain, "x@broken.test")
    events = wait_until(lambda: (e := events_of(db, message_id)) and len(e) >= 2 and e)
    assert events[1]["event"] == "failed" and events[1]["severity"] == "temporary"
    row = db.execute("SELECT status FROM recipients WHERE address = 'x@broken.test'").fetchone()
    assert row["status"] == "queued"


def test_test_mode_records_650_and_sends_nothing(services, account, domain, db, sink, dns, relay):
    route(dns, "tm.test")
    message_id = send(services, account["id"], domain, "t@tm.test", o_testmode="yes")
    events = wait_until(lambda: (e := events_of(db, message_id)) and len(e) == 2 and e)
    assert events[1]["event"] == "delivered" and events[1]["data"]["delivery-status"]["code"] == 650
    assert events[1]["data"]["flags"]["is-test-mode"] is True
    assert sink.messages() == []


def test_gives_up_after_lifetime(services, settings, account, domain, db, sink, dns):
    route(dns, "slow.test")
    sink.set_script({"default_data": "451 4.7.1 Greylisted, try again"})
    short = relay_settings(settings, sink, dns, message_lifetime=4, retry_schedule=(1,))
    services.intake.settings = short
    try:
        message_id = send(services, account["id"], domain, "x@slow.test")
    finally:
        services.intake.settings = settings
    with RelayThread(services, short):
        events = wait_until(lambda: (e := events_of(db, message_id)) and e[-1]["severity"] == "permanent" and e, 20)
    assert events[-1]["data"]["reason"] == "old"
    assert events[-1]["data"]["delivery-status"]["message"] == "Too old"
    assert sum(1 for e in events if e["severity"] == "temporary") >= 2


def test_a_delivered_event_with_a_webhook_wakes_the_dispatcher(services, account, domain, db, sink, dns, relay):
    # The relay records outcomes in a worker thread and runs the after-commit listeners on its event
    # loop: the webhook dispatcher's doorbell must still ring for the outbox rows the batch made.
    from envoi.webhooks import store as webhook_store

    route(dns, "dest.test")
    with services.db.transaction() as conn:
        webhook_store.set_urls(conn, account["id"], domain["id"], "delivered", [("https://hooks.example.test/d", None)])
    doorbell = services.webhooks.doorbell
    doorbell.conn.delete(doorbell.key)
    try:
        message_id = send(services, account["id"], domain, "hook@dest.test")
        wait_until(lambda: (e := events_of(db, message_id)) and e[-1]["event"] == "delivered")
        wait_until(lambda: doorbell.conn.llen(doorbell.key) == 1, timeout=5)
        rows = db.execute("SELECT event_type, payload->>'event' AS event FROM webhook_deliveries"
                          " WHERE domain_id = %s", (domain["id"],)).fetchall()
        assert [(r["event_type"], r["event"]) for r in rows] == [("delivered", "delivered")]
    finally:
        db.execute("DELETE FROM webhook_deliveries WHERE domain_id = %s", (domain["id"],))
        db.execute("DELETE FROM webhooks WHERE domain_id = %s", (domain["id"],))
