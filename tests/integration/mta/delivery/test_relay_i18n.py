"""Internationalised mail through the real relay, and a transaction that raises, against the dev sink.

A UTF-8 local part goes with SMTPUTF8 to a server that offers it and fails at once, with a clear
reason, where it is not offered; IDN domains travel as A-labels (envelope and MX lookup); and
whatever raises inside an SMTP transaction leaves the session clean for the next message.
"""

from __future__ import annotations

import uuid

import pytest

from envoi.accounts.service import Principal
from envoi.dev.sink import Sink
from envoi.mta.compose import from_mime
from tests.support import faults
from tests.support.delivery import route, send
from tests.support.dns_server import DnsServer
from tests.support.relay import RelayThread, relay_settings, wait_until


@pytest.fixture
def dns():
    with DnsServer() as server:
        yield server


@pytest.fixture
def one_connection(tmp_path):
    """A shaping file allowing one connection per destination: every message shares one session."""
    path = tmp_path / "shaping.toml"
    path.write_text("[default]\nmax_connections = 1\n")
    return str(path)


def outcomes(db, message_id) -> dict[str, list[dict]]:
    """Per recipient, the relay's events (accepted left out)."""
    found: dict[str, list[dict]] = {}
    for row in db.execute("SELECT event, severity, recipient, data FROM events WHERE message_id = %s"
                          " AND event <> 'accepted' ORDER BY id", (message_id,)).fetchall():
        found.setdefault(row["recipient"], []).append(row)
    return found


def settled(db, message_id, recipients: int, timeout=20) -> dict[str, dict]:
    """The final event of each recipient once none is queued any more."""
    def done():
        rows = db.execute("SELECT status FROM recipients r JOIN messages m ON m.id = r.message_pk"
                          " WHERE m.message_id = %s", (message_id,)).fetchall()
        return len(rows) == recipients and all(r["status"] != "queued" for r in rows)
    wait_until(done, timeout)
    return {rcpt: events[-1] for rcpt, events in outcomes(db, message_id).items()}


def other_tenant(services):
    account = services.accounts.create_account(f"acct-{uuid.uuid4().hex[:6]}")
    domain = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.example.test", dkim_key_size=1024,
                                          verified=True)
    return account, domain


def test_utf8_local_part_is_delivered_with_smtputf8(services, settings, account, domain, db, dns):
    route(dns, "utf8.test")
    with Sink() as sink, RelayThread(services, relay_settings(settings, sink, dns)):
        message_id = send(services, account["id"], domain, ["ü@utf8.test"])
        final = settled(db, message_id, 1)
    assert final["ü@utf8.test"]["event"] == "delivered"
    [received] = sink.messages()
    assert received["rcpt_tos"] == ["ü@utf8.test"] and received["smtputf8"] is True


def test_ascii_mail_does_not_ask_for_smtputf8(services, settings, account, domain, db, dns):
    route(dns, "plain8.test")
    with Sink() as sink, RelayThread(services, relay_settings(settings, sink, dns)):
        assert settled(db, send(services, account["id"], domain, ["a@plain8.test"]), 1)["a@plain8.test"][
            "event"] == "delivered"
    assert sink.messages()[0]["smtputf8"] is False


def test_utf8_local_part_without_smtputf8_fails_clearly_and_other_tenants_mail_flows(
        services, settings, account, domain, db, dns, one_connection):
    """The issue's case: one non-ASCII recipient must not break the shared session for anyone else."""
    route(dns, "old.test")
    other_account, other_domain = other_tenant(services)
    with Sink(smtputf8=False) as sink, RelayThread(services, relay_settings(settings, sink, dns,
                                                                            shaping_file=one_connection)):
        poisons, others = [], []
        for batch in range(5):
            # A poison with an ASCII co-recipient: that one must still be delivered.
            poisons.append(send(services, account["id"], domain, [f"ü{batch}@old.test", f"ok{batch}@old.test"]))
            others += [send(services, other_account["id"], other_domain, [f"o{batch}-{i}@old.test"])
                       for i in range(20)]
        sink.wait_for(105, timeout=30)
        finals = [settled(db, mid, 2) for mid in poisons]
        other_finals = [settled(db, mid, 1) for mid in others]
    for batch, final in enumerate(finals):
        failed = final[f"ü{batch}@old.test"]
        assert failed["event"] == "failed" and failed["severity"] == "permanent"
        status = failed["data"]["delivery-status"]
        assert (status["code"], status["enhanced-code"]) == (553, "5.6.7")
        assert "SMTPUTF8 not supported by the receiving server" in status["message"]
        assert status["mx-host"] == "mx.old.test"
        assert final[f"ok{batch}@old.test"]["event"] == "delivered"
        assert len(outcomes(db, poisons[batch])[f"ü{batch}@old.test"]) == 1  # one attempt, no retries
    assert all(next(iter(f.values()))["event"] == "delivered" for f in other_finals)
    received = sorted(r for m in sink.messages() for r in m["rcpt_tos"])
    assert len(received) == 105 and not any("ü" in r for r in received)
    assert sink.stats()["attempts"] == 105  # every DATA was a success: no 503 along the way


@pytest.mark.parametrize("offered", [True, False])
def test_utf8_in_the_header_asks_for_smtputf8_where_offered(services, settings, account, domain, db, dns, offered):
    """RFC 6532 headers (as SMTP submission may bring them): SMTPUTF8 where offered, else sent as before."""
    route(dns, "hdr.test")
    mime = (f"From: Jürgen <s@{domain['name']}>\r\nTo: a@hdr.test\r\nSubject: Grüße\r\n\r\nbody\r\n").encode()
    draft = from_mime(domain["name"], mime, ["a@hdr.test"], {}, method="smtp")
    with Sink(smtputf8=offered) as sink, RelayThread(services, relay_settings(settings, sink, dns)):
        message_id = services.intake.accept(Principal(None, account["id"], "admin"), domain, draft).strip("<>")
        assert settled(db, message_id, 1)["a@hdr.test"]["event"] == "delivered"
    [received] = sink.messages()
    assert received["smtputf8"] is offered and "Subject: Grüße" in received["data"]


def test_idn_domain_is_sent_and_looked_up_as_its_a_label(services, settings, account, domain, db, dns):
    # IDNA 2008: "ß" stays a letter (xn--strae-oqa), where IDNA 2003 would have made it "ss".
    for name in ("xn--bcher-kva.example.test", "xn--strae-oqa.example.test"):
        route(dns, name)
    with Sink() as sink, RelayThread(services, relay_settings(settings, sink, dns)):
        message_id = send(services, account["id"], domain, ["user@bücher.example.test", "user@straße.example.test"])
        final = settled(db, message_id, 2)
    assert {rcpt: e["event"] for rcpt, e in final.items()} == {"user@bücher.example.test": "delivered",
                                                              "user@straße.example.test": "delivered"}
    assert sorted(r for m in sink.messages() for r in m["rcpt_tos"]) == [
        "user@xn--bcher-kva.example.test", "user@xn--strae-oqa.example.test"]
    assert not any(m["smtputf8"] for m in sink.messages())  # A-labels need no SMTPUTF8
    assert ("xn--strae-oqa.example.test", "MX") in dns.queries
    assert not any(name.startswith("strasse") for name, _ in dns.queries)


@pytest.fixture
def raise_in_rcpt(monkeypatch):
    """RCPT TO for a "boom" address raises inside the transaction (after MAIL FROM was accepted)."""
    faults.raise_in_rcpt(monkeypatch, b"boom")


@pytest.fixture
def raise_in_data(monkeypatch):
    """A message whose text says BOOM raises after the server's 354, while the body is being sent."""
    faults.raise_in_data(monkeypatch, b"BOOM")


def _crash_then_next(services, account, domain, db, sink, poison_to, poison_text):
    poison = send(services, account["id"], domain, [poison_to], text=poison_text)
    wait_until(lambda: outcomes(db, poison), 15)
    after = send(services, account["id"], domain, ["next@crash.test"])
    return poison, settled(db, after, 1)["next@crash.test"]


def test_exception_after_mail_from_resets_the_session_for_the_next_message(
        services, settings, account, domain, db, dns, one_connection, raise_in_rcpt):
    route(dns, "crash.test")
    with Sink() as sink, RelayThread(services, relay_settings(settings, sink, dns, shaping_file=one_connection,
                                                              retry_schedule=(0.5,))):
        before = send(services, account["id"], domain, ["before@crash.test"])
        assert settled(db, before, 1)["before@crash.test"]["event"] == "delivered"
        poison, after = _crash_then_next(services, account, domain, db, sink, "boom@crash.test", "body")
        assert after["event"] == "delivered" and after["data"]["delivery-status"]["attempt-no"] == 1
        first, second = sink.messages()
        assert second["rcpt_tos"] == ["next@crash.test"]
        assert second["connected_at"] == first["connected_at"]  # RSET: the same session carried on
        # The message that raised: retried a bounded number of times, then failed for good.
        final = settled(db, poison, 1)["boom@crash.test"]
    events = outcomes(db, poison)["boom@crash.test"]
    assert [e["severity"] for e in events] == ["temporary", "temporary", "permanent"]
    assert final["event"] == "failed" and "internal error" in final["data"]["delivery-status"]["message"]
    assert len(sink.messages()) == 2


def test_exception_while_sending_the_body_closes_the_session_and_the_next_message_arrives(
        services, settings, account, domain, db, dns, one_connection, raise_in_data):
    route(dns, "crash.test")
    with Sink() as sink, RelayThread(services, relay_settings(settings, sink, dns, shaping_file=one_connection)):
        poison, after = _crash_then_next(services, account, domain, db, sink, "a@crash.test", "BOOM")
        first = outcomes(db, poison)["a@crash.test"][0]
        assert after["event"] == "delivered" and after["data"]["delivery-status"]["attempt-no"] == 1
        [received] = sink.messages()
        db.execute("UPDATE recipients SET status = 'failed' WHERE message_pk ="
                   " (SELECT id FROM messages WHERE message_id = %s)", (poison,))
    assert received["rcpt_tos"] == ["next@crash.test"] and "BOOM" not in received["data"]
    assert first["event"] == "failed" and first["severity"] == "temporary"
    assert "internal error" in first["data"]["delivery-status"]["message"]
