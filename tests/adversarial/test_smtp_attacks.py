"""Hostile SMTP sessions against real submission (STARTTLS on loopback, real Postgres and Redis).

Each attack asserts the effect that matters: nothing smuggled or oversize is stored, injected
commands have no effect, an attacker is throttled while real clients are still served.
"""

from __future__ import annotations

import base64
import smtplib
import socket
import time

import pytest

from tests.support.submission import PASSWORD, SMALL_LIMIT, mime, raw_data
from tests.support.submission import starttls_client as client

pytestmark = [pytest.mark.attack, pytest.mark.usefixtures("clean_throttle")]
LIMIT = SMALL_LIMIT  # the shared test server's size limit
OTHER_IP = "127.0.0.2"  # a second client address on loopback


def subjects(db, domain) -> list[str]:
    rows = db.execute("SELECT headers FROM messages WHERE domain_id = %s ORDER BY id", (domain["id"],)).fetchall()
    return [r["headers"]["subject"] for r in rows]


def victims(db, domain) -> int:
    return db.execute("SELECT count(*) AS n FROM recipients WHERE domain_id = %s AND address = 'victim@dest.test'",
                      (domain["id"],)).fetchone()["n"]


# smuggling ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("end", [b"\n.\n", b"\n.\r\n", b"\r.\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\n.\r",
                                 b"\r\n\x00.\r\n", b"\r\n.\x00\r\n"],
                         ids=repr)
def test_smuggled_message_is_never_queued(server, client_ctx, login, domain, db, end):
    smuggled = (b"MAIL FROM:<" + login.encode() + b">\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\n"
                b"From: ceo@bank.test\r\nSubject: smuggled\r\n\r\nevil\r\n")
    with client(server, client_ctx, login) as c:
        c.mail(login)
        c.rcpt("rcpt@dest.test")
        code, reply = raw_data(c, mime(domain, subject="outer", body="Hello") + end + smuggled + b".\r\n")
        assert code in (550, 554), (code, reply)  # the whole thing is refused, not split in two
        assert c.noop()[0] == 250  # still in sync
        c.sendmail(login, ["rcpt@dest.test"], mime(domain, subject="clean"))
    assert subjects(db, domain) == ["clean"] and victims(db, domain) == 0


# STARTTLS injection ----------------------------------------------------------------------------------
def test_commands_pipelined_after_starttls_are_discarded(server, client_ctx, login, domain, db):
    token = base64.b64encode(f"\0{login}\0{PASSWORD}".encode())
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        raw.sendall(b"EHLO client.test\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        # plaintext injected before the handshake: an AUTH and a whole transaction
        raw.sendall(b"STARTTLS\r\nEHLO evil.test\r\nAUTH PLAIN " + token + b"\r\nMAIL FROM:<" + login.encode()
                    + b">\r\nRCPT TO:<victim@dest.test>\r\n")
        assert reader.readline().startswith(b"220 ")
        with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls_reader = tls.makefile("rb")
            tls.sendall(b"EHLO client.test\r\n")
            while not (line := tls_reader.readline()).startswith(b"250 "):
                assert line.startswith(b"250-"), line
            tls.sendall(b"MAIL FROM:<" + login.encode() + b">\r\n")
            assert tls_reader.readline().startswith(b"530 ")  # the injected AUTH did not count
    assert victims(db, domain) == 0


# AUTH brute force -------------------------------------------------------------------------------------
def brute_force(server, client_ctx, login, tries: int = 25) -> list[int]:
    codes = []
    with client(server, client_ctx) as c:
        for i in range(tries):
            try:
                c.login(login, f"wrong-{i}")
            except smtplib.SMTPAuthenticationError as ex:
                codes.append(ex.smtp_code)
            except smtplib.SMTPException:
                codes.append(-1)
                break
    return codes


def test_brute_force_is_throttled(server, client_ctx, login):
    codes = brute_force(server, client_ctx, login)
    assert codes and codes[0] == 535
    assert any(code != 535 for code in codes), "25 wrong passwords in a row and never throttled"
    with pytest.raises(smtplib.SMTPException), client(server, client_ctx) as c:  # same address, right password
        c.login(login, PASSWORD)


def test_correct_login_from_another_address_still_works_during_brute_force(server, client_ctx, login, domain, db):
    brute_force(server, client_ctx, login)
    with client(server, client_ctx, login, source=OTHER_IP) as c:
        c.sendmail(login, ["rcpt@dest.test"], mime(domain, subject="owner"))
    assert subjects(db, domain) == ["owner"]


# connection flood -----------------------------------------------------------------------------------
FLOOD = 300


def flood(port: int) -> list[socket.socket]:
    """FLOOD idle connections from 127.0.0.1, held open."""
    socks = []
    for _ in range(FLOOD):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(s)
    return socks


def test_connection_flood_does_not_starve_real_clients(server, client_ctx, login, domain, db):
    socks = flood(server.port)
    try:
        started = time.monotonic()
        with client(server, client_ctx, login, source=OTHER_IP) as c:
            c.sendmail(login, ["rcpt@dest.test"], mime(domain, subject="served"))
        assert time.monotonic() - started < 10
    finally:
        for s in socks:
            s.close()
    assert subjects(db, domain) == ["served"]


def test_connections_from_one_address_are_capped(server):
    socks = flood(server.port)
    try:
        refused = 0
        for s in socks:
            try:
                greeting = s.recv(200)
            except OSError:
                refused += 1
                continue
            if not greeting or greeting.startswith(b"421"):
                refused += 1
        assert refused > 0, f"{FLOOD} connections from one address, every one greeted"
    finally:
        for s in socks:
            s.close()


# long lines -------------------------------------------------------------------------------------------
def test_command_line_over_1000_octets_is_refused(server, client_ctx, login, domain, db):
    with client(server, client_ctx, login) as c:
        code, reply = c.docmd("MAIL", "FROM:<" + "a" * 1100 + f"@{domain['name']}>")
        assert code == 500 and reply.startswith(b"5.5.2"), (code, reply)
        assert c.noop()[0] == 250
        c.sendmail(login, ["rcpt@dest.test"], mime(domain, subject="after"))
    assert subjects(db, domain) == ["after"]


# NUL bytes ---------------------------------------------------------------------------------------------
def test_nul_byte_in_data_is_refused(server, client_ctx, login, domain, db):
    with client(server, client_ctx, login) as c:
        c.mail(login)
        c.rcpt("rcpt@dest.test")
        code, reply = raw_data(c, mime(domain, subject="nul", body="a\x00b\r\n") + b".\r\n")
        assert code == 550 and reply.startswith(b"5.6.0"), (code, reply)
    assert subjects(db, domain) == []


# oversize --------------------------------------------------------------------------------------------
def test_oversize_message_gets_552_and_nothing_is_stored(server, client_ctx, login, domain, db):
    big = mime(domain, body=("x" * 998 + "\r\n") * (LIMIT // 1000 + 10))
    with client(server, client_ctx, login) as c:
        code, reply = c.mail(login, [f"SIZE={len(big)}"])
        assert code == 552 and reply.startswith(b"5.3.4")
        c.mail(login, ["SIZE=1000"])  # a client that lies about the size
        c.rcpt("rcpt@dest.test")
        code, reply = c.data(big)
        assert code == 552 and reply.startswith(b"5.3.4")
        c.sendmail(login, ["rcpt@dest.test"], mime(domain, subject="small"))
    assert subjects(db, domain) == ["small"]
