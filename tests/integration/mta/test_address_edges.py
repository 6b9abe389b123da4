"""One address, two edges: the send API and SMTP submission accept and refuse the same addresses,
and store an accepted one identically (compose.normalize_address behind both)."""

from __future__ import annotations

import email.parser
import email.policy

import pytest

from tests.support.api import send_form
from tests.support.submission import mime, queued_id, starttls_client

# The TLS submission server and its login come from tests/support/submission.py (one server per module).
pytestmark = pytest.mark.usefixtures("clean_throttle")

# (address as given, address stored) -- None: refused by both edges.
RECIPIENTS = [
    ("plain@dest.test", "plain@dest.test"),
    ("Mixed.Case@DEST.Test", "Mixed.Case@dest.test"),
    ("ü@dest.test", "ü@dest.test"),
    ("U\u0308ber@dest.test", "Über@dest.test"),  # NFC
    ("用户@例子.dest.test", "用户@例子.dest.test"),
    ("user@bücher.dest.test", "user@bücher.dest.test"),
    ("user@xn--bcher-kva.dest.test", "user@bücher.dest.test"),  # an A-label is the same domain
    ('"quoted"@dest.test', "quoted@dest.test"),  # RFC 5321 4.1.2: the same mailbox
    ("a..b@dest.test", None),
    ('"a..b"@dest.test', None),
    ('"a b"@dest.test', None),
    ("user@-bad.dest.test", None),
    ("user@exa_mple.test", None),
    ("user@localhost", None),
    ("user@xn--zz.dest.test", None),  # not valid punycode
    ("user@bü-.dest.test", None),
    ("a\u200bb@dest.test", None),  # zero-width space
]


def stored_recipients(db, message_id):
    return [r["address"] for r in db.execute(
        "SELECT address FROM recipients r JOIN messages m ON m.id = r.message_pk WHERE m.message_id = %s",
        (message_id,)).fetchall()]


def over_api(client, api_key, domain, db, to):
    resp = send_form(client, api_key, domain, to=to)
    if resp.status_code != 200:
        assert resp.status_code == 400 and "not a valid address" in resp.json["message"], resp.text
        return None
    return stored_recipients(db, resp.json["id"].strip("<>"))


def over_smtp(smtp, login, domain, db, to):
    # Raw commands: smtplib's mail()/rcpt() would re-parse the address ('"quoted"@x' -> 'quoted@x').
    smtp.rset()
    smtp.command_encoding = "utf-8"
    code, _ = smtp.docmd("MAIL", f"FROM:<{login}>" + ("" if to.isascii() else " SMTPUTF8"))
    assert code == 250
    code, reply = smtp.docmd("RCPT", f"TO:<{to}>")
    if code != 250:
        assert (code, reply[:5]) == (553, b"5.1.3"), reply
        return None
    code, reply = smtp.data(mime(domain))
    assert code == 250, reply
    return stored_recipients(db, queued_id(reply))


def test_api_and_smtp_accept_and_refuse_the_same_addresses(client, api_key, domain, db, server, client_ctx,
                                                           login):
    with starttls_client(server, client_ctx, login) as smtp:
        assert smtp.has_extn("smtputf8")
        results = [(given, over_api(client, api_key, domain, db, given), over_smtp(smtp, login, domain, db, given))
                   for given, _ in RECIPIENTS]
    expected = [(given, None if want is None else [want], None if want is None else [want])
                for given, want in RECIPIENTS]
    assert results == expected


def test_api_and_smtp_agree_on_senders(client, api_key, domain, db, server, client_ctx, login):
    results = []
    with starttls_client(server, client_ctx, login) as smtp:
        for local in ("user", "ü", "Über", "a..b", "a b", '"quoted"'):
            sender = f"{local}@{domain['name']}"
            resp = send_form(client, api_key, domain, **{"from": sender})
            smtp.rset()
            smtp.command_encoding = "utf-8"
            code, reply = smtp.docmd("MAIL", f"FROM:<{sender}>" + ("" if sender.isascii() else " SMTPUTF8"))
            results.append((local, resp.status_code, code))
    assert results == [("user", 200, 250), ("ü", 200, 250), ("Über", 200, 250),
                       ("a..b", 400, 553), ("a b", 400, 553), ('"quoted"', 200, 250)]


def test_smtp_non_ascii_address_needs_smtputf8(server, client_ctx, login, domain):
    with starttls_client(server, client_ctx, login) as smtp:
        smtp.command_encoding = "utf-8"  # a client that sends UTF-8 without asking for SMTPUTF8
        assert smtp.docmd("MAIL", f"FROM:<{login}>")[0] == 250
        code, reply = smtp.docmd("RCPT", "TO:<ü@dest.test>")
        assert (code, reply[:5]) == (553, b"5.6.7")
        assert smtp.docmd("RSET")[0] == 250
        code, reply = smtp.docmd("MAIL", f"FROM:<ü@{domain['name']}>")
        assert (code, reply[:5]) == (553, b"5.6.7")


def test_smtp_with_raw_utf8_headers_is_accepted(server, client_ctx, login, domain, db):
    data = mime(domain, subject="Grüße", sender=f"Jürgen <ü@{domain['name']}>", to="用户@例子.dest.test")
    with starttls_client(server, client_ctx, login) as smtp:
        assert smtp.mail(f"ü@{domain['name']}", ["SMTPUTF8"])[0] == 250
        assert smtp.rcpt("用户@例子.dest.test")[0] == 250
        code, reply = smtp.data(data)
    assert code == 250, reply
    assert stored_recipients(db, queued_id(reply)) == ["用户@例子.dest.test"]


def test_smtp_refuses_invalid_utf8_in_an_address(server, client_ctx, login):
    with starttls_client(server, client_ctx, login) as smtp:
        assert smtp.mail(login, ["SMTPUTF8"])[0] == 250
        smtp.send(b"RCPT TO:<\xff\xfe@dest.test>\r\n")
        code, reply = smtp.getreply()
    assert (code, reply[:5]) == (553, b"5.1.3")


def test_api_writes_utf8_addresses_into_the_header_as_they_are(client, api_key, domain, db, services):
    """RFC 6532: display names may be encoded words; an address never is (readers could not use it)."""
    resp = send_form(client, api_key, domain, **{"from": f"Jürgen <ü@{domain['name']}>",
                                                 "to": ["Zoë <user@bücher.dest.test>, ü@dest.test"],
                                                 "cc": '"Doe, Ünal" <c@dest.test>'})
    assert resp.status_code == 200, resp.text
    row = db.execute("SELECT body, storage_key FROM messages WHERE message_id = %s",
                     (resp.json["id"].strip("<>"),)).fetchone()
    raw = services.sealer.open(row["body"], row["storage_key"].encode())
    head = email.parser.Parser(policy=email.policy.default).parsestr(raw.decode(), headersonly=True)
    assert [(a.display_name, a.addr_spec) for a in head["From"].addresses] == [("Jürgen", f"ü@{domain['name']}")]
    assert [(a.display_name, a.addr_spec) for a in head["To"].addresses] == [
        ("Zoë", "user@xn--bcher-kva.dest.test"), ("", "ü@dest.test")]  # an ASCII local part: A-labels
    assert [(a.display_name, a.addr_spec) for a in head["Cc"].addresses] == [("Doe, Ünal", "c@dest.test")]
