"""A stuck or absent Postgres: the API answers a Mailgun-style 503 within seconds and SMTP a 451 4.3.0
(never a hang, never a bare 500), and both work again once the database is back. The database is
reached through a TCP proxy on loopback that the test freezes (a stuck path or backend: connections
open, nothing answers) or takes down (as in a restart)."""

from __future__ import annotations

import smtplib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from psycopg.conninfo import conninfo_to_dict

from envoi import runtime
from envoi.api.errors import UNAVAILABLE
from envoi.mta.submission.server import DB_TEMPFAIL, Submission, SubmissionServer
from tests.conftest import basic
from tests.support.api import send_form
from tests.support.relay import wait_until
from tests.support.tcp_proxy import TcpProxy
from tests.support.tls import loopback_contexts

DEADLINE = 2.0  # the write deadline and pool timeout of the services behind the proxy
PASSWORD = "correct-horse-9"


@pytest.fixture
def proxy(settings):
    params = conninfo_to_dict(settings.database_url)
    with TcpProxy((params.get("host", "127.0.0.1"), int(params.get("port", 5432)))) as proxy:
        yield proxy


@pytest.fixture
def proxied(settings, proxy):
    """Services whose Postgres is behind the proxy."""
    svc = runtime.build(settings.replace(database_url=proxy.dsn(settings.database_url), db_write_deadline=DEADLINE,
                                         db_pool_timeout=DEADLINE), pool_size=2)
    yield svc
    proxy.thaw()
    svc.close()


@pytest.fixture
def api_services(proxied):
    """The shared `client` serves the services behind the proxy."""
    return proxied


@pytest.fixture(autouse=True)
def nothing_left_queued(domain, db):
    yield
    # Keep these recipients away from relays started by later tests.
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'", (domain["id"],))


def send(client, domain, key, to="rcpt@dest.test"):
    started = time.monotonic()
    resp = send_form(client, key, domain, to=to)
    return resp, time.monotonic() - started


def test_stuck_database_answers_503_within_seconds_and_later_requests_succeed(client, proxied, proxy, domain,
                                                                              api_key, db):
    resp, _ = send(client, domain, api_key)  # warms the key and domain caches: only the write is left
    assert resp.status_code == 200, resp.text
    proxy.freeze()
    # A leader stuck in its write and a caller queued behind it (group commit): both answer.
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(send, client, domain, api_key, f"stuck{i}@dest.test") for i in range(2)]
        results = [future.result(timeout=30) for future in futures]
    for resp, seconds in results:
        assert resp.status_code == 503, resp.text
        assert resp.json == {"message": UNAVAILABLE}
        assert seconds < 3 * DEADLINE + 2
    proxy.thaw()
    resp, seconds = send(client, domain, api_key, "after@dest.test")
    assert resp.status_code == 200, resp.text
    message_id = resp.json["id"].strip("<>")
    assert db.execute("SELECT count(*) AS n FROM messages WHERE message_id = %s", (message_id,)).fetchone()["n"] == 1


def test_database_down_answers_503_then_recovers(client, proxied, proxy, domain, api_key, db):
    assert send(client, domain, api_key)[0].status_code == 200
    proxy.down()  # Postgres restarting: connections dropped, nothing listening
    for _ in range(3):  # broken pooled connections, then no connection at all (pool timeout)
        resp, seconds = send(client, domain, api_key)
        assert resp.status_code == 503, resp.text
        assert resp.json == {"message": UNAVAILABLE} and resp.headers.get("Retry-After")
        assert seconds < DEADLINE + 2
    resp = client.simulate_get(f"/v3/{domain['name']}/events", headers=basic(api_key))  # not only the send path
    assert resp.status_code == 503 and resp.json == {"message": UNAVAILABLE}
    proxy.up()
    resp = wait_until(lambda: (r := send(client, domain, api_key, "back@dest.test")[0]).status_code == 200 and r,
                      timeout=15, interval=0.2)
    message_id = resp.json["id"].strip("<>")
    assert db.execute("SELECT count(*) AS n FROM messages WHERE message_id = %s", (message_id,)).fetchone()["n"] == 1


@pytest.fixture
def smtp_server(proxied):
    ctx, client_ctx = loopback_contexts()
    submission = Submission.from_settings(proxied.settings, proxied.intake, proxied.accounts, proxied.redis,
                                          auth_failure_delay=0)
    with SubmissionServer(submission, ctx) as srv:
        yield srv, client_ctx
    submission.close()


def test_smtp_answers_451_while_the_database_is_down(proxied, proxy, smtp_server, account, domain, db):
    server, client_ctx = smtp_server
    proxied.accounts.create_credential(account["id"], domain["name"], "app", PASSWORD)
    login = f"app@{domain['name']}"
    body = f"From: {login}\r\nTo: r@dest.test\r\nSubject: Hi\r\n\r\nbody\r\n".encode()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as c:
        c.starttls(context=client_ctx)
        c.login(login, PASSWORD)
        c.sendmail(login, ["r@dest.test"], body)  # warms the domain cache
        proxy.down()
        c.mail(login)
        c.rcpt("r@dest.test")
        started = time.monotonic()
        code, text = c.data(body)
        assert (code, f"{code} {text.decode()}") == (451, DB_TEMPFAIL)
        assert time.monotonic() - started < DEADLINE + 2
        proxy.up()
        wait_until(lambda: _sent(c, login, body), timeout=15, interval=0.2)
    assert db.execute("SELECT count(*) AS n FROM recipients WHERE domain_id = %s AND address = 'back@dest.test'",
                      (domain["id"],)).fetchone()["n"] == 1


def _sent(c: smtplib.SMTP, login: str, body: bytes) -> bool:
    try:
        return c.sendmail(login, ["back@dest.test"], body) == {}
    except smtplib.SMTPResponseException as ex:
        assert ex.smtp_code == 451  # the pool is still reconnecting
        c.rset()
        return False
