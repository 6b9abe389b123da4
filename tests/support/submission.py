"""The SMTP submission tests' TLS server, login and helpers, shared by the modules that speak SMTP to it.

Registered as a plugin in tests/conftest.py; `clean_throttle` is not autouse here: a module that needs
it says `pytestmark = pytest.mark.usefixtures("clean_throttle")`.
"""

from __future__ import annotations

import smtplib
import ssl

import pytest
import trustme

from envoi.mta.submission.server import Submission, SubmissionServer

PASSWORD = "correct-horse-9"
SMALL_LIMIT = 200_000  # the test server's size limit, so the oversize case stays fast


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def client_ctx(ca):
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture(scope="module")
def server(services, settings, ca):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    submission = Submission.from_settings(settings, services.intake, services.accounts, services.redis,
                                          template_sending=services.template_sending,
                                          auth_failure_delay=0, max_message_bytes=SMALL_LIMIT, workers=4)
    with SubmissionServer(submission, ctx) as srv:
        yield srv
    submission.close()


@pytest.fixture
def clean_throttle(services):
    yield
    for key in services.redis.scan_iter("envoi:*:smtp-auth-failures:*"):
        services.redis.delete(key)


@pytest.fixture
def login(services, account, domain, db):
    services.accounts.create_credential(account["id"], domain["name"], "app", PASSWORD)
    yield f"app@{domain['name']}"
    # Nothing here is meant to be delivered (except by the end-to-end test, which is done by now):
    # keep these recipients away from relays started by other tests in this session.
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'",
               (domain["id"],))


def mime(domain, subject="Hello", extra="", body="Body line\r\n", sender=None, to="rcpt@dest.test") -> bytes:
    sender = sender or f"App <app@{domain['name']}>"
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n{extra}"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}").encode()


def starttls_client(server, client_ctx, login=None, source: str | None = None) -> smtplib.SMTP:
    """A client past STARTTLS (and AUTH with `login`), connecting from loopback address `source` if given."""
    c = smtplib.SMTP("127.0.0.1", server.port, timeout=10, local_hostname="app.client.test",
                     source_address=(source, 0) if source else None)
    c.starttls(context=client_ctx)
    if login:
        c.login(login, PASSWORD)
    return c


def raw_data(c: smtplib.SMTP, payload: bytes) -> tuple[int, bytes]:
    """DATA with the payload sent byte for byte (smtplib would fix line endings and dot-stuff)."""
    c.putcmd("DATA")
    code, _ = c.getreply()
    assert code == 354
    c.send(payload)
    return c.getreply()


def messages_of(db, domain):
    return db.execute("SELECT * FROM messages WHERE domain_id = %s ORDER BY id", (domain["id"],)).fetchall()


def stored(services, row) -> bytes:
    return services.sealer.open(row["body"], row["storage_key"].encode())


def queued_id(reply: bytes | str) -> str:
    text = reply.decode() if isinstance(reply, bytes) else reply
    return text.rsplit("queued as ", 1)[1].strip().strip("<>")
