"""SMTP submission on real TLS listeners (587 STARTTLS, 465 implicit TLS) with smtplib and aiosmtplib."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import smtplib
import ssl
import time

import aiosmtplib
import pytest

from envoi.dev.sink import Sink
from envoi.mta.submission.server import Submission, SubmissionServer
from envoi.mta.submission.throttle import AuthThrottle
from tests.support.dns_server import DnsServer
from tests.support.relay import RelayThread, relay_settings, wait_until
from tests.support.submission import (
    PASSWORD,
    SMALL_LIMIT,
    messages_of,
    mime,
    queued_id,
    raw_data,
    starttls_client,
    stored,
)

pytestmark = pytest.mark.usefixtures("clean_throttle")

def test_starttls_submission_applies_and_strips_mailgun_headers(server, client_ctx, login, domain, db, services):
    extra = ("X-Mailgun-Tag: newsletter, weekly\r\nX-Mailgun-TAG:\r\n  folded-tag\r\n"
             "X-Mailgun-Drop-Message: yes\r\nX-Mailgun-Variables: {\"order\": \"42\",\r\n \"vip\": true}\r\n"
             "X-Mailgun-Track: no\r\nX-Mailgun-Require-TLS: yes\r\nX-Mailgun-Unknown-Thing: x\r\n"
             "X-Other: kept\r\n")
    with starttls_client(server, client_ctx, login) as c:
        code, reply = c.ehlo()
        assert b"PIPELINING" in reply and b"AUTH LOGIN PLAIN" in reply and b"SIZE 200000" in reply
        c.sendmail(login, ["rcpt@dest.test", "two@dest.test"], mime(domain, extra=extra))
    [row] = messages_of(db, domain)
    assert row["method"] == "smtp" and row["mail_from"] == login
    assert row["tags"] == ["newsletter", "weekly", "folded-tag"]
    assert row["options"]["testmode"] is True and row["options"]["tracking"] is False
    assert row["options"]["require_tls"] is True
    assert row["user_variables"] == {"order": "42", "vip": "true"}
    rcpts = db.execute("SELECT address, status FROM recipients WHERE message_pk = %s ORDER BY address",
                       (row["id"],)).fetchall()
    assert rcpts == [{"address": "rcpt@dest.test", "status": "queued"}, {"address": "two@dest.test", "status": "queued"}]
    events = db.execute("SELECT event, data FROM events WHERE message_id = %s", (row["message_id"],)).fetchall()
    assert [e["event"] for e in events] == ["accepted", "accepted"]
    assert events[0]["data"]["method"] == "smtp"
    assert events[0]["data"]["tags"] == ["newsletter", "weekly", "folded-tag"]
    raw = stored(services, row)
    assert b"x-mailgun" not in raw.lower() and b"folded-tag" not in raw
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "Hello" and msg["X-Other"] == "kept" and msg["Message-ID"]
    assert msg["Received"].startswith("from app.client.test by localhost (Envoi) with ESMTPSA;")
    assert "127.0.0.1" not in msg["Received"]  # the client's address is not disclosed
    assert msg.get_content().strip() == "Body line"


def test_implicit_tls_465_with_auth_login(server, client_ctx, login, domain, db, services):
    accepted = services.metrics.accepted.labels("smtp")
    before = accepted._value.get()
    with smtplib.SMTP_SSL("127.0.0.1", server.smtps_port, context=client_ctx, timeout=10) as c:
        code, reply = c.ehlo()
        assert b"AUTH" in reply and b"STARTTLS" not in reply
        c.user, c.password = login, PASSWORD
        code, reply = c.auth("LOGIN", c.auth_login)
        assert (code, reply) == (235, b"2.7.0 Authentication successful")
        c.sendmail(login, ["rcpt@dest.test", "two@dest.test"], mime(domain, subject="over 465"))
    [row] = messages_of(db, domain)
    assert row["headers"]["subject"] == "over 465" and row["method"] == "smtp"
    assert accepted._value.get() == before + 2  # envoi_messages_accepted_total{method="smtp"}


def test_aiosmtplib_many_messages_per_connection(server, client_ctx, login, domain, db):
    async def run():
        replies = []
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, start_tls=True,
                                   tls_context=client_ctx) as c:
            await c.login(login, PASSWORD)
            for n in range(3):
                _, reply = await c.sendmail(login, [f"r{n}@dest.test"], mime(domain, subject=f"m{n}"))
                replies.append(reply)
            await c.rset()
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=server.smtps_port, use_tls=True,
                                   tls_context=client_ctx) as c:
            await c.login(login, PASSWORD)
            _, reply = await c.sendmail(login, ["r9@dest.test"], mime(domain, subject="m9"))
            replies.append(reply)
        return replies

    replies = asyncio.run(run())
    rows = messages_of(db, domain)
    assert [r["headers"]["subject"] for r in rows] == ["m0", "m1", "m2", "m9"]
    # each 250 names the committed message
    assert [queued_id(r) for r in replies] == [r["message_id"] for r in rows]


def test_concurrent_sessions_share_commits_and_a_refused_message_fails_alone(
        server, client_ctx, login, account, domain, db, services):
    # A second domain of the account, disabled: its messages are refused in the commit stage, in the
    # middle of the batches of the first domain's messages, which must all be committed.
    other = services.accounts.add_domain(account["id"], f"off-{domain['name']}", dkim_key_size=1024, verified=True)
    services.accounts.create_credential(account["id"], other["name"], "app", PASSWORD)
    services.accounts.set_domain_state(other["id"], "disabled")
    other_login = f"app@{other['name']}"

    async def session(user, dom, n, tag):
        replies = []
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, start_tls=True,
                                   tls_context=client_ctx) as c:
            await c.login(user, PASSWORD)
            for i in range(n):
                try:
                    _, reply = await c.sendmail(user, [f"r{i}@dest.test"], mime(dom, subject=f"{tag}-{i}",
                                                                                  sender=user))
                    replies.append(("ok", reply))
                except aiosmtplib.SMTPDataError as ex:
                    replies.append((ex.code, ex.message))
        return replies

    async def run():
        return await asyncio.gather(*[session(login, domain, 5, f"s{k}") for k in range(12)],
                                    *[session(other_login, other, 5, f"x{k}") for k in range(2)])

    results = asyncio.run(run())
    accepted = [queued_id(reply) for replies in results[:12] for kind, reply in replies if kind == "ok"]
    refused = [(kind, reply) for replies in results[12:] for kind, reply in replies]
    assert len(accepted) == 60 and all(kind == 550 and reply.startswith("5.7.1") for kind, reply in refused)
    rows = db.execute("SELECT message_id, xmin::text AS tx FROM messages WHERE domain_id = %s",
                      (domain["id"],)).fetchall()
    assert sorted(r["message_id"] for r in rows) == sorted(accepted)  # every 250 names a committed message
    assert len({r["tx"] for r in rows}) < len(rows)  # sessions shared transactions
    assert messages_of(db, other) == []


def test_pipelined_commands_two_messages_one_write_each(server, client_ctx, login, domain, db):
    import socket

    def replies(reader, n: int) -> list[bytes]:
        out = []
        while len(out) < n:
            line = reader.readline()
            if line[3:4] != b"-":
                out.append(line[:3])
        return out

    token = base64.b64encode(f"\0{login}\0{PASSWORD}".encode())
    envelope = f"MAIL FROM:<{login}>\r\nRCPT TO:<p1@dest.test>\r\nRCPT TO:<p2@dest.test>\r\nDATA\r\n".encode()
    with socket.create_connection(("127.0.0.1", server.smtps_port), timeout=10) as raw, \
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        reader = tls.makefile("rb")
        assert replies(reader, 1) == [b"220"]
        tls.sendall(b"EHLO c.test\r\nAUTH PLAIN " + token + b"\r\n" + envelope)
        assert replies(reader, 6) == [b"250", b"235", b"250", b"250", b"250", b"354"]
        tls.sendall(mime(domain, subject="p1") + b".\r\nRSET\r\n" + envelope)
        assert replies(reader, 6) == [b"250", b"250", b"250", b"250", b"250", b"354"]
        tls.sendall(mime(domain, subject="p2") + b".\r\nQUIT\r\n")
        assert replies(reader, 2) == [b"250", b"221"]
    rows = messages_of(db, domain)
    assert [r["headers"]["subject"] for r in rows] == ["p1", "p2"]


def test_auth_before_starttls_is_refused(server, domain, login, db):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as c:
        code, reply = c.ehlo()
        assert b"STARTTLS" in reply and b"AUTH" not in reply
        token = base64.b64encode(f"\0{login}\0{PASSWORD}".encode()).decode()
        code, reply = c.docmd("AUTH", f"PLAIN {token}")
        assert (code, reply) == (530, b"5.7.0 Must issue a STARTTLS command first")
        code, _ = c.docmd("MAIL", f"FROM:<{login}>")
        assert code == 530
    assert messages_of(db, domain) == []


def test_commands_pipelined_with_starttls_are_discarded(server, client_ctx):
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        raw.sendall(b"EHLO client.test\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        raw.sendall(b"STARTTLS\r\nQUIT\r\n")  # the QUIT is plaintext injected before the handshake
        assert reader.readline().startswith(b"220 ")
        with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"NOOP\r\n")
            assert tls.recv(100) == b"250 2.0.0 OK\r\n"  # not 221: the injected QUIT was dropped


def test_starttls_inside_tls_is_refused_and_the_session_goes_on(server, client_ctx):
    with starttls_client(server, client_ctx) as c:
        c.ehlo()
        assert c.docmd("STARTTLS") == (503, b"5.5.1 TLS already active")
        assert c.noop()[0] == 250


def test_mail_without_auth_is_refused(server, client_ctx, domain, db):
    with starttls_client(server, client_ctx) as c:
        c.ehlo()
        code, reply = c.mail(f"app@{domain['name']}")
        assert (code, reply) == (530, b"5.7.0 Authentication required")
        code, _ = c.rcpt("someone@external.test")
        assert code == 530
    assert messages_of(db, domain) == []


def test_wrong_password_and_unknown_login_get_the_same_error_then_throttle(server, client_ctx, login):
    def plain(c, user, password):
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return c.docmd("AUTH", f"PLAIN {token}")

    with starttls_client(server, client_ctx) as c:
        c.ehlo()
        bad_password = plain(c, login, "wrong-password")
        unknown_user = plain(c, "nobody@nowhere.test", "wrong-password")
        assert bad_password == unknown_user == (535, b"5.7.8 Authentication credentials invalid")
    # 5 failures per login per window (the first one above counted): 4 more, over two connections
    # because each connection allows only 5 AUTH commands.
    for _ in range(2):
        with starttls_client(server, client_ctx) as c:
            c.ehlo()
            for _ in range(2):
                assert plain(c, login, "wrong-password")[0] == 535
    with starttls_client(server, client_ctx) as c:
        c.ehlo()
        code, reply = plain(c, login, PASSWORD)  # the right password, but throttled
        assert (code, reply) == (454, b"4.7.0 Too many failed authentication attempts, try again later")
        code, _ = c.mail(login)
        assert code == 530


def test_auth_throttle_per_address_and_login_without_redis():
    throttle = AuthThrottle(None, "t", max_per_login=2, max_per_ip=3, window=60)
    assert throttle.failed("10.0.0.1", "a@x.test") == 1
    assert not throttle.blocked("10.0.0.1", "a@x.test")
    assert throttle.failed("10.0.0.1", "A@x.test ") == 2  # same login, differently spelled
    assert throttle.blocked("10.0.0.1", "a@x.test") and not throttle.blocked("10.0.0.1", "b@x.test")
    assert not throttle.blocked("10.0.0.2", "a@x.test")  # the login itself is not locked out elsewhere
    throttle.failed("10.0.0.1", "c@x.test")
    assert throttle.blocked("10.0.0.1", "b@x.test")  # the address is out of attempts for every login
    assert not throttle.blocked("10.0.0.2", "b@x.test")
    throttle.failed("2001:db8::1", "v6@x.test")
    throttle.failed("2001:db8::2", "v6@x.test")  # the same /64: one client
    assert throttle.blocked("2001:db8::ffff", "v6@x.test") and not throttle.blocked("2001:db8:0:1::1", "v6@x.test")
    assert [AuthThrottle.backoff(0.5, n) for n in (1, 2, 3, 4, 5, 9)] == [0.5, 1, 2, 4, 8, 8]
    assert AuthThrottle.backoff(0, 4) == 0


def _plain(c, user, password):
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return c.docmd("AUTH", f"PLAIN {token}")


def test_brute_force_from_one_address_does_not_lock_the_login_out_from_another(server, client_ctx, login, domain,
                                                                                 db):
    for _ in range(2):  # 10 wrong passwords (5 AUTH commands per connection), from 127.0.0.1
        with starttls_client(server, client_ctx) as c:
            c.ehlo()
            for _ in range(5):
                assert _plain(c, login, "guess")[0] in (535, 454)
    with starttls_client(server, client_ctx) as c:
        c.ehlo()
        assert _plain(c, login, PASSWORD)[0] == 454  # that address stays throttled for that login
    other = smtplib.SMTP("127.0.0.1", server.port, timeout=10, source_address=("127.0.0.2", 0))
    with other as c:
        c.starttls(context=client_ctx)
        c.ehlo()
        assert _plain(c, login, PASSWORD) == (235, b"2.7.0 Authentication successful")
        c.sendmail(login, ["rcpt@dest.test"], mime(domain, subject="from elsewhere"))
    assert [r["headers"]["subject"] for r in messages_of(db, domain)] == ["from elsewhere"]


@pytest.fixture
def limited(services, settings, ca):
    """A server with small connection caps and a short idle time before AUTH."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    submission = Submission.from_settings(settings, services.intake, services.accounts, services.redis,
                                          auth_failure_delay=0, workers=1, max_connections_per_ip=3,
                                          max_connections=6, preauth_timeout=0.6, timeout=30)
    with SubmissionServer(submission, ctx) as srv:
        yield srv
    submission.close()


def _connect(srv, source: str) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", srv.port, timeout=10, source_address=(source, 0))


def test_connection_caps_per_address_and_in_total(limited):
    held = [_connect(limited, "127.0.0.1") for _ in range(3)]
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        _connect(limited, "127.0.0.1")
    assert refused.value.smtp_code == 421 and refused.value.smtp_error.startswith(b"4.7.0 Too many connections")
    held.append(_connect(limited, "127.0.0.2"))  # another address is still served
    assert held[-1].noop()[0] == 250
    held[0].quit()  # a slot comes back when its connection ends
    wait_until(lambda: limited.submission.limit.held_by("127.0.0.1") == 2)
    held[0] = _connect(limited, "127.0.0.1")
    held += [_connect(limited, "127.0.0.3"), _connect(limited, "127.0.0.3")]  # 6 open: the total cap
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        _connect(limited, "127.0.0.4")
    assert refused.value.smtp_code == 421
    for c in held:
        c.close()
    wait_until(lambda: limited.submission.limit.open == 0)


def test_idle_connection_is_closed_sooner_before_auth(limited, client_ctx, login):
    stranger = _connect(limited, "127.0.0.5")
    stranger.ehlo()
    customer = starttls_client(limited, client_ctx, login)
    time.sleep(1.2)  # twice the pre-AUTH idle time
    with pytest.raises(smtplib.SMTPServerDisconnected):
        stranger.noop()
    assert customer.noop()[0] == 250  # authenticated: the long idle time applies
    customer.quit()


def test_nul_byte_in_data_is_refused_and_nothing_stored(server, client_ctx, login, domain, db):
    with starttls_client(server, client_ctx, login) as c:
        c.mail(login)
        c.rcpt("rcpt@dest.test")
        code, reply = c.data(mime(domain, body="before\0after\r\n"))
        assert code == 550 and reply.startswith(b"5.6.0") and b"NUL" in reply
        assert c.noop()[0] == 250  # the session goes on
    assert messages_of(db, domain) == []


def test_from_mixing_utf8_with_undecodable_bytes_is_refused_under_smtputf8(server, client_ctx, login, domain, db):
    """Was a 451 and a traceback (compat32 cannot str() such a header): a 5.6.0 refusal, nothing stored."""
    head = f"From: Jos\u00e9 \\xe9 <{login}>\r\nTo: rcpt@dest.test\r\nSubject: s\r\n\r\nhi\r\n"
    data = head.encode("utf-8").replace(b"\\xe9", b"\xe9")
    with starttls_client(server, client_ctx, login) as c:
        assert c.mail(login, ["SMTPUTF8"])[0] == 250
        c.rcpt("rcpt@dest.test")
        code, reply = c.data(data)
        assert code == 550 and reply.startswith(b"5.6.0") and b"From" in reply, (code, reply)
        assert c.noop()[0] == 250  # the session goes on
    assert messages_of(db, domain) == []


def test_foreign_sender_is_refused_subdomain_allowed(server, client_ctx, login, domain, db):
    with starttls_client(server, client_ctx, login) as c:
        code, reply = c.mail("ceo@bank.test")
        assert code == 553 and reply.startswith(b"5.7.1")
        c.rset()
        c.mail(login)
        c.rcpt("rcpt@dest.test")
        code, reply = c.data(mime(domain, sender="CEO <ceo@bank.test>"))
        assert code == 550 and reply.startswith(b"5.7.1")
        # a From that CPython's two address parsers read differently (CVE-2023-27043 class)
        c.rset()
        c.mail(login)
        c.rcpt("rcpt@dest.test")
        code, reply = c.data(mime(domain, sender=f"ceo@bank.test <{login}>"))
        assert code == 550 and reply.startswith(b"5.6.0")
        c.rset()
        c.sendmail(login, ["rcpt@dest.test"], mime(domain, sender=f"News <news@mail.{domain['name']}>"))
    [row] = messages_of(db, domain)
    assert row["headers"]["from"] == f"News <news@mail.{domain['name']}>"


@pytest.mark.parametrize("smuggle", [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r"])
def test_bare_lf_smuggling_is_rejected(server, client_ctx, login, domain, db, smuggle):
    head = mime(domain, subject="outer", body="")
    smuggled = (b"MAIL FROM:<" + login.encode() + b">\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\n"
                b"From: ceo@bank.test\r\nSubject: smuggled\r\n\r\nevil\r\n")
    with starttls_client(server, client_ctx, login) as c:
        c.ehlo()
        c.mail(login)
        c.rcpt("rcpt@dest.test")
        code, reply = raw_data(c, head + b"Hello" + smuggle + smuggled + b".\r\n")
        assert code == 550 and reply.startswith(b"5.6.0") and b"bare CR or LF" in reply
        # the session is still in sync: a clean message goes through afterwards
        assert c.noop()[0] == 250
        c.sendmail(login, ["rcpt@dest.test"], mime(domain, subject="clean"))
    rows = messages_of(db, domain)
    assert [r["headers"]["subject"] for r in rows] == ["clean"]
    assert not db.execute("SELECT 1 FROM recipients WHERE domain_id = %s AND address = 'victim@dest.test'",
                          (domain["id"],)).fetchall()


def test_oversize_message_is_refused_and_nothing_stored(server, client_ctx, login, domain, db):
    big = mime(domain, body=("x" * 998 + "\r\n") * (SMALL_LIMIT // 1000 + 10))
    with starttls_client(server, client_ctx, login) as c:
        code, reply = c.mail(login, [f"SIZE={len(big)}"])
        assert code == 552 and reply.startswith(b"5.3.4")
        c.mail(login)
        c.rcpt("rcpt@dest.test")
        code, reply = c.data(big)
        assert code == 552 and reply.startswith(b"5.3.4")
        c.sendmail(login, ["rcpt@dest.test"], mime(domain, subject="small"))  # connection still usable
    assert [r["headers"]["subject"] for r in messages_of(db, domain)] == ["small"]


@pytest.mark.parametrize("octets", [1200, 5000])
def test_long_line_is_refused(server, client_ctx, login, domain, db, octets):
    with starttls_client(server, client_ctx, login) as c:
        c.mail(login)
        c.rcpt("rcpt@dest.test")
        code, reply = c.data(mime(domain, body="y" * octets + "\r\n"))
        assert code == 500 and reply.startswith(b"5.5.2")
    assert messages_of(db, domain) == []


def test_data_is_unstuffed_and_kept_whole_across_reads(server, client_ctx, login, domain, db, services):
    """Dot-stuffed lines, the longest allowed line, and a body bigger than one read of the server."""
    lines = [".hidden", "..two dots", ".", "x" * 998, "last"] + [f"filler {i:06d} " + "z" * 80 for i in range(1500)]
    body = "\r\n".join(lines) + "\r\n"
    with starttls_client(server, client_ctx, login) as c:
        c.sendmail(login, ["rcpt@dest.test"], mime(domain, subject="dots", body=body))  # smtplib stuffs dots
        c.sendmail(login, ["rcpt@dest.test"], mime(domain, subject="empty", body=""))
    rows = messages_of(db, domain)
    assert [r["headers"]["subject"] for r in rows] == ["dots", "empty"]
    assert stored(services, rows[0]).endswith(("\r\n\r\n" + body).encode())
    assert len(stored(services, rows[0])) > 140_000
    assert stored(services, rows[1]).endswith(b"charset=utf-8\r\n\r\n")


def test_recipient_limit(server, client_ctx, login, domain, db):
    with starttls_client(server, client_ctx, login) as c:
        c.mail(login)
        for n in range(1000):
            assert c.rcpt(f"r{n}@dest.test")[0] == 250
        code, reply = c.rcpt("r1000@dest.test")
        assert code == 452 and reply.startswith(b"4.5.3")
        code, _ = c.data(mime(domain))
        assert code == 250
    [row] = messages_of(db, domain)
    n = db.execute("SELECT count(*) AS n FROM recipients WHERE message_pk = %s", (row["id"],)).fetchone()["n"]
    assert n == 1000


def test_recipient_variables_make_one_copy_per_recipient(server, client_ctx, login, domain, db, services):
    extra = 'X-Mailgun-Recipient-Variables: {"a@dest.test": {"name": "Ann"}, "b@dest.test": {"name": "Bob"}}\r\n'
    with starttls_client(server, client_ctx, login) as c:
        c.sendmail(login, ["a@dest.test", "b@dest.test"],
                   mime(domain, subject="Hi %recipient.name%", extra=extra, body="Dear %recipient.name% (%recipient%)\r\n"))
    rows = messages_of(db, domain)
    bodies = sorted(stored(services, r) for r in rows)
    assert len(rows) == 2 and len({r["message_id"] for r in rows}) == 1
    assert b"Subject: Hi Ann" in bodies[0] and b"Dear Ann (a@dest.test)" in bodies[0]
    assert b"Subject: Hi Bob" in bodies[1] and b"Dear Bob (b@dest.test)" in bodies[1]
    assert all(b"x-mailgun" not in b.lower() for b in bodies)


def test_big_message_to_many_recipients_is_composed_off_the_loop_and_stored(server, client_ctx, login, domain, db,
                                                                           services):
    # 120 KB to 12 recipients with recipient-variables: over the size the server composes on its event
    # loop, so it is composed in a worker thread; the result must be the same kind of copies.
    rcpts = [f"p{i}@dest.test" for i in range(12)]
    variables = ", ".join(f'"{r}": {{"n": "N{i}"}}' for i, r in enumerate(rcpts))
    extra = f"X-Mailgun-Recipient-Variables: {{{variables}}}\r\n"
    body = "Hello %recipient.n%\r\n" + ("x" * 998 + "\r\n") * 120
    with starttls_client(server, client_ctx, login) as c:
        c.sendmail(login, rcpts, mime(domain, extra=extra, body=body))
    rows = messages_of(db, domain)
    assert len(rows) == 12
    bodies = sorted(stored(services, r) for r in rows)
    assert sorted(b.split(b"Hello ", 1)[1].split(b"\r\n", 1)[0] for b in bodies) == sorted(f"N{i}".encode() for i in range(12))
    assert all(len(b) > 120_000 for b in bodies)


def test_bad_option_header_is_refused(server, client_ctx, login, domain, db):
    with starttls_client(server, client_ctx, login) as c:
        c.mail(login)
        c.rcpt("rcpt@dest.test")
        code, reply = c.data(mime(domain, extra="X-Mailgun-Variables: {not json\r\n"))
        assert code == 550 and reply.startswith(b"5.6.0")
    assert messages_of(db, domain) == []


def test_disabled_domain_is_refused(server, client_ctx, login, domain, db, services):
    services.accounts.set_domain_state(domain["id"], "disabled")
    with starttls_client(server, client_ctx, login) as c:
        c.mail(login)
        c.rcpt("rcpt@dest.test")
        code, reply = c.data(mime(domain))
        assert code == 550 and reply.startswith(b"5.7.1")
    assert messages_of(db, domain) == []


def test_submission_is_delivered_end_to_end(server, client_ctx, login, domain, db, services, settings):
    with Sink() as sink, DnsServer() as dns:
        dns.add("submit-e2e.test", "MX", "10 mx.submit-e2e.test.")
        dns.add("mx.submit-e2e.test", "A", "127.0.0.1")
        relay_cfg = relay_settings(settings, sink, dns)
        with RelayThread(services, relay_cfg):
            with starttls_client(server, client_ctx, login) as c:
                c.sendmail(login, ["rcpt@submit-e2e.test"],
                           mime(domain, subject="e2e", extra="X-Mailgun-Tag: e2e\r\n"))
            [received] = wait_until(lambda: sink.messages(to="rcpt@submit-e2e.test"))
            [row] = messages_of(db, domain)
            wait_until(lambda: db.execute("SELECT status FROM recipients WHERE message_pk = %s",
                                          (row["id"],)).fetchone()["status"] == "delivered")
    raw = received["data"].encode("utf-8", "surrogateescape")
    assert received["rcpt_tos"] == ["rcpt@submit-e2e.test"]
    assert b"Subject: e2e" in raw and b"X-Mailgun-Tag" not in raw and b"DKIM-Signature" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_default_limits_follow_settings(services, settings):
    submission = Submission.from_settings(settings, services.intake, services.accounts, services.redis)
    assert submission.config.max_message_bytes == 25 * 1024 * 1024
    assert submission.config.max_recipients == 1000
    assert not submission.config.allow_foreign_from
    # The commit stage waits ENVOI_SMTP_COMMIT_DELAY under load, not the API's ENVOI_INTAKE_COMMIT_DELAY.
    assert submission.stage.delay == settings.smtp_commit_delay == 0.002 != settings.intake_commit_delay
    submission.close()


def test_idle_connections_are_closed_and_active_ones_are_not(services, settings, ca, client_ctx):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    submission = Submission.from_settings(settings, services.intake, services.accounts, services.redis,
                                          timeout=0.6, workers=1)
    with SubmissionServer(submission, ctx) as srv:
        active = smtplib.SMTP("127.0.0.1", srv.port, timeout=10)
        idle = smtplib.SMTP("127.0.0.1", srv.port, timeout=10)
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # well past the timeout, a command every 0.2 s
            assert active.noop()[0] == 250
            time.sleep(0.2)
        assert active.noop()[0] == 250  # every command moved the deadline
        with pytest.raises(smtplib.SMTPServerDisconnected):
            idle.noop()  # closed after 0.6 s without a command
        time.sleep(1.0)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            active.noop()  # and the active one too, once it fell silent
    submission.close()
