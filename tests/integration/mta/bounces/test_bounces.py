"""Asynchronous bounces and complaints: deliver through the real relay to the sink, then send DSN /
ARF reports to the inbound listener over SMTP and check what was recorded (and what was not)."""

from __future__ import annotations

import smtplib
import uuid

import pytest

from envoi import runtime
from envoi.dev.sink import Sink
from envoi.mta.bounces import verp
from tests.support import paths
from tests.support.delivery import send
from tests.support.dns_server import DnsServer
from tests.support.relay import RelayThread, relay_settings, wait_until

FIXTURES = paths.FIXTURES / "bounces"
RCPT_DOMAIN = "bounced.test"
FIXTURE_VERP = "bounce+aaaq.aaaae.abcdefgh@mg.example.com"
FIXTURE_MESSAGE_ID = "20261123164011.1.DEADBEEF@mg.example.com"


@pytest.fixture(scope="module")
def sink():
    with Sink() as s:
        yield s


@pytest.fixture(scope="module")
def relay(services, settings, sink):
    with DnsServer() as dns:
        dns.add(RCPT_DOMAIN, "MX", f"10 mx.{RCPT_DOMAIN}.")
        dns.add(f"mx.{RCPT_DOMAIN}", "A", "127.0.0.1")
        relay_cfg = relay_settings(settings, sink, dns)
        with RelayThread(services, relay_cfg) as thread:
            yield thread
            # Leave nothing queued behind for the relays of later test modules.
            wait_until(lambda: _queued(services) == 0, 20)


def _queued(services) -> int:
    with services.db.transaction() as conn:
        return conn.execute("SELECT count(*) AS n FROM recipients WHERE status = 'queued' AND rcpt_domain = %s",
                            (RCPT_DOMAIN,)).fetchone()["n"]


@pytest.fixture(scope="module")
def inbound(services):
    with runtime.build_inbound(services, host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture
def key(settings):
    return verp.key_from_secret(settings.secret_key)


def rows_of(db, message_id):
    return db.execute("SELECT r.id, r.message_pk, r.address, r.status FROM recipients r JOIN messages m"
                      " ON m.id = r.message_pk WHERE m.message_id = %s ORDER BY r.id", (message_id,)).fetchall()


def events_of(db, message_id, event=None):
    rows = db.execute("SELECT event, severity, recipient, data FROM events WHERE message_id = %s ORDER BY id",
                      (message_id,)).fetchall()
    return [r for r in rows if event is None or r["event"] == event]


def delivered(db, message_id, count=1):
    return wait_until(lambda: (r := rows_of(db, message_id)) and len(r) == count
                      and all(x["status"] == "delivered" for x in r) and r)


def report(name: str, *, rcpt: str, message_id: str, return_path: str, to_header: str | None = None) -> bytes:
    raw = (FIXTURES / name).read_text()
    original_rcpt = {"postfix_dsn.eml": "nosuchuser@example.net", "exchange_dsn.eml": "gone.user@contoso.example",
                     "gmail_dsn_mailbox_full.eml": "full.person@gmail.example", "delayed_dsn.eml": "slow@example.org",
                     "yahoo_arf.eml": "annoyed.reader@yahoo.example"}[name]
    raw = raw.replace(original_rcpt, rcpt).replace(FIXTURE_MESSAGE_ID, message_id).replace(FIXTURE_VERP, return_path)
    return raw.encode()


def deliver_report(inbound, to: str, raw: bytes, mail_from: str = "") -> None:
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # on the wire, as MTAs send it
    with smtplib.SMTP("127.0.0.1", inbound.port, timeout=10) as client:
        client.sendmail(mail_from, [to], raw)


def bounce_listed(services, domain, address) -> bool:
    return any(i["address"] == address.lower() for i in services.suppressions.export(domain, "bounces"))


def test_dsn_after_delivery_records_delayed_bounce_and_suppresses(services, account, domain, db, sink, relay,
                                                                  inbound, key):
    rcpt = f"nosuch-{uuid.uuid4().hex[:6]}@{RCPT_DOMAIN}"
    message_id = send(services, account["id"], domain, [rcpt])
    [row] = delivered(db, message_id)
    # The relay sent it with the per-recipient VERP return path: that is where the DSN goes.
    [sent] = [m for m in sink.messages() if rcpt in m["rcpt_tos"]]
    return_path = sent["mail_from"]
    assert return_path == verp.return_path(domain["name"], row["message_pk"], row["id"], key)
    raw = report("postfix_dsn.eml", rcpt=rcpt, message_id=message_id, return_path=return_path)

    deliver_report(inbound, return_path, raw)
    deliver_report(inbound, return_path, raw)  # the remote retransmits: still one event

    [failed] = wait_until(lambda: events_of(db, message_id, "failed"))
    data = failed["data"]
    assert failed["severity"] == "permanent" and failed["recipient"] == rcpt
    assert data["reason"] == "bounce" and data["flags"]["is-delayed-bounce"] is True
    status = data["delivery-status"]
    assert (status["code"], status["enhanced-code"], status["bounce-class"]) == (550, "5.1.1", "invalid-recipient")
    assert status["mx-host"] == "mailstore.example.net" and "User unknown" in status["message"]
    assert data["message"]["headers"]["message-id"] == message_id
    assert rows_of(db, message_id)[0]["status"] == "delivered"  # the row keeps its status, as Mailgun
    assert len(events_of(db, message_id, "failed")) == 1
    assert bounce_listed(services, domain, rcpt)


def test_mailbox_full_dsn_fails_but_does_not_suppress(services, account, domain, db, relay, inbound, key):
    rcpt = f"full-{uuid.uuid4().hex[:6]}@{RCPT_DOMAIN}"
    message_id = send(services, account["id"], domain, [rcpt])
    [row] = delivered(db, message_id)
    return_path = verp.return_path(domain["name"], row["message_pk"], row["id"], key)
    deliver_report(inbound, return_path, report("gmail_dsn_mailbox_full.eml", rcpt=rcpt, message_id=message_id,
                                                return_path=return_path))
    [failed] = events_of(db, message_id, "failed")
    assert failed["severity"] == "permanent" and failed["data"]["flags"]["is-delayed-bounce"] is True
    status = failed["data"]["delivery-status"]
    assert (status["code"], status["enhanced-code"], status["bounce-class"]) == (552, "5.2.2", "mailbox-full")
    assert not bounce_listed(services, domain, rcpt)


def test_delayed_dsn_records_no_failure(services, account, domain, db, relay, inbound, key):
    rcpt = f"slow-{uuid.uuid4().hex[:6]}@{RCPT_DOMAIN}"
    message_id = send(services, account["id"], domain, [rcpt])
    [row] = delivered(db, message_id)
    return_path = verp.return_path(domain["name"], row["message_pk"], row["id"], key)
    deliver_report(inbound, return_path, report("delayed_dsn.eml", rcpt=rcpt, message_id=message_id,
                                                return_path=return_path))  # accepted (250) ...
    assert [e["event"] for e in events_of(db, message_id)] == ["accepted", "delivered"]  # ... and dropped
    assert not bounce_listed(services, domain, rcpt)


def test_message_verp_finds_the_recipient_from_the_dsn(services, account, domain, db, sink, relay, inbound, key):
    first, second = (f"{n}-{uuid.uuid4().hex[:6]}@{RCPT_DOMAIN}" for n in ("kept", "gone"))
    message_id = send(services, account["id"], domain, [first, second])
    rows = delivered(db, message_id, 2)
    [sent] = [m for m in sink.messages() if second in m["rcpt_tos"]]
    assert sorted(sent["rcpt_tos"]) == sorted([first, second])  # one transaction ...
    return_path = sent["mail_from"]
    assert verp.parse(return_path, key) == (rows[0]["message_pk"], None)  # ... with the per-message VERP
    deliver_report(inbound, return_path, report("exchange_dsn.eml", rcpt=second, message_id=message_id,
                                                return_path=return_path))
    [failed] = events_of(db, message_id, "failed")
    assert failed["recipient"] == second
    assert failed["data"]["delivery-status"]["enhanced-code"] == "5.1.10"
    assert bounce_listed(services, domain, second) and not bounce_listed(services, domain, first)


def test_arf_complaint_by_message_id_records_complained(services, account, domain, db, relay, inbound):
    rcpt = f"annoyed-{uuid.uuid4().hex[:6]}@{RCPT_DOMAIN}"
    message_id = send(services, account["id"], domain, [rcpt])
    delivered(db, message_id)
    raw = report("yahoo_arf.eml", rcpt=rcpt, message_id=message_id, return_path="x")
    # No VERP anywhere (a redacting FBL): found by Message-ID among the messages of the FBL's domain.
    raw = b"\n".join(line for line in raw.split(b"\n")
                     if not line.startswith((b"Original-Mail-From:", b"Return-Path: <x>")))
    deliver_report(inbound, f"fbl@{domain['name']}", raw, mail_from="feedback@arf.mail.yahoo.com")
    deliver_report(inbound, f"fbl@{domain['name']}", raw, mail_from="feedback@arf.mail.yahoo.com")
    [complained] = events_of(db, message_id, "complained")
    assert complained["recipient"] == rcpt and complained["data"]["log-level"] == "warn"
    assert [i["address"] for i in services.suppressions.export(domain, "complaints")] == [rcpt.lower()]


def test_arf_for_another_tenants_message_id_is_dropped(services, account, domain, db, relay, inbound):
    # Message-ID lookups are scoped to the domain the report was sent to: B's FBL address cannot
    # complain about A's message.
    tenant = services.accounts.create_account(f"other-{uuid.uuid4().hex[:6]}")
    other = services.accounts.add_domain(tenant["id"], f"{uuid.uuid4().hex[:8]}.other.test", dkim_key_size=1024, verified=True)
    rcpt = f"x-{uuid.uuid4().hex[:6]}@{RCPT_DOMAIN}"
    message_id = send(services, account["id"], domain, [rcpt])
    raw = report("yahoo_arf.eml", rcpt=rcpt, message_id=message_id, return_path="x")
    deliver_report(inbound, f"fbl@{other['name']}", raw)  # the FBL address of another tenant's domain
    assert events_of(db, message_id, "complained") == []


def test_forged_verp_and_unknown_addresses_are_refused(services, account, domain, db, relay, inbound, key):
    rcpt = f"victim-{uuid.uuid4().hex[:6]}@{RCPT_DOMAIN}"
    message_id = send(services, account["id"], domain, [rcpt])
    [row] = delivered(db, message_id)
    genuine = verp.return_path(domain["name"], row["message_pk"], row["id"], key)
    forged = verp.return_path(domain["name"], row["message_pk"], row["id"], b"attacker-key" * 3)
    raw = report("postfix_dsn.eml", rcpt=rcpt, message_id=message_id, return_path=forged)
    for address in (forged, genuine.replace("@", "x@", 1), f"someone@{domain['name']}", "fbl@not-ours.test"):
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            deliver_report(inbound, address, raw)
        assert refused.value.recipients[address][0] == 550
    assert events_of(db, message_id, "failed") == []
    assert not bounce_listed(services, domain, rcpt)


def test_unmatched_and_garbage_reports_are_accepted_and_dropped(services, account, domain, db, inbound, key):
    ghost = verp.return_path(domain["name"], 2**40, 2**40, key)  # valid HMAC, no such message
    deliver_report(inbound, ghost, (FIXTURES / "postfix_dsn.eml").read_bytes())
    deliver_report(inbound, ghost, b"Subject: hello\r\n\r\nnot a report at all\r\n")
    deliver_report(inbound, f"postmaster@{domain['name']}", b"Subject: hi\r\n\r\nhi\r\n")
    assert db.execute("SELECT count(*) AS n FROM events WHERE domain_id = %s AND event IN"
                      " ('failed', 'complained')", (domain["id"],)).fetchone()["n"] == 0


def test_plain_text_bounce_with_per_recipient_verp(services, account, domain, db, relay, inbound, key):
    rcpt = f"olduser-{uuid.uuid4().hex[:6]}@{RCPT_DOMAIN}"
    message_id = send(services, account["id"], domain, [rcpt])
    [row] = rows_of(db, message_id)
    return_path = verp.return_path(domain["name"], row["message_pk"], row["id"], key)
    raw = (FIXTURES / "qmail_bounce.eml").read_text().replace("olduser@example.info", rcpt)
    deliver_report(inbound, return_path, raw.replace(FIXTURE_VERP, return_path).encode())
    [failed] = events_of(db, message_id, "failed")
    assert failed["recipient"] == rcpt and failed["data"]["delivery-status"]["enhanced-code"] == "5.1.1"


def test_envoi_inbound_command_is_registered():
    from click.testing import CliRunner

    from envoi.cli import main

    result = CliRunner().invoke(main, ["inbound", "--help"])
    assert result.exit_code == 0 and "--port" in result.output


def test_reports_are_counted_in_metrics(services, domain, inbound, key):
    counter = services.metrics.inbound_reports
    before = counter.labels("dsn", "dropped")._value.get()
    deliver_report(inbound, verp.return_path(domain["name"], 2**41, None, key),
                   (FIXTURES / "delayed_dsn.eml").read_bytes())
    assert counter.labels("dsn", "dropped")._value.get() == before + 1
