"""Sends at the documented limits, end to end: 1,000 recipients with tracking on and 5 KB of variables
each, through the API and through SMTP, answered and delivered to the dev sink. Their intake
transaction carries ~20 MB: it used to hang for ever in the pipelined commit (Postgres in
ClientRead), and every later accept of the process behind it."""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
import time
from urllib.parse import urlencode

import pytest

from envoi.mta.submission.server import Submission, SubmissionServer
from tests.conftest import basic
from tests.support.tls import loopback_contexts

N = 1000
PASSWORD = "correct-horse-9"
HTML = '<html><body><p>Hello %recipient.name%</p><a href="https://shop.example/item?id=7">buy</a>' \
       "<p>%recipient.blob%</p></body></html>"


def blob(i: int, sep: str = " ") -> str:
    return sep.join([f"w{i:04d}xyz"] * 560)  # ~5 KB, with spaces where SMTP may fold the header


def variables(sep: str = " ") -> dict:
    return {f"r{i}@dest.test": {"name": f"N{i}", "blob": blob(i, sep)} for i in range(N)}


@pytest.fixture
def tracking_on(client, domain, api_key):
    for kind in ("open", "click"):
        resp = client.simulate_put(f"/v3/domains/{domain['name']}/tracking/{kind}", body=urlencode({"active": "yes"}),
                                   headers={"Content-Type": "application/x-www-form-urlencoded", **basic(api_key)})
        assert resp.status_code == 200, resp.text


def delivered(the_sink, message_id: str) -> dict[str, str]:
    """recipient -> raw message, once every recipient's copy reached the sink."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        got = {m["rcpt_tos"][0]: m["data"] for m in the_sink.messages() if message_id in m["data"]}
        if len(got) == N:
            return got
        time.sleep(0.5)
    raise AssertionError(f"{len(got)} of {N} delivered")


def check_copies(got: dict[str, str], sep: str = " ") -> None:
    assert set(got) == {f"r{i}@dest.test" for i in range(N)}
    for i in (0, 517, N - 1):
        msg = email.message_from_string(got[f"r{i}@dest.test"], policy=email.policy.default)
        html = msg.get_body(("html",)).get_content()
        assert f"Hello N{i}" in html and f"w{i:04d}xyz{sep}w{i:04d}xyz" in html.replace("\r\n", "\n")  # its own variables
        assert "shop.example/item" not in html and ".example.test/c/" in html  # the link is tracked (email.<domain>)


@pytest.mark.timeout(300)
def test_api_send_to_1000_recipients_with_tracking_and_5kb_variables_each(client, tracking_on, domain, api_key, db,
                                                                          sink, relay):
    started = time.monotonic()
    resp = client.simulate_post(f"/v3/{domain['name']}/messages", headers={
        "Content-Type": "application/x-www-form-urlencoded", **basic(api_key)}, body=urlencode({
            "from": f"s@{domain['name']}", "to": [f"r{i}@dest.test" for i in range(N)], "subject": "Big",
            "html": HTML, "recipient-variables": json.dumps(variables()), "v:data": blob(9999),
        }, doseq=True))
    answered = time.monotonic() - started
    assert resp.status_code == 200, resp.text
    message_id = resp.json["id"].strip("<>")
    check_copies(delivered(sink, message_id))
    print(f"\nAPI: 1,000 recipients answered in {answered:.2f} s, delivered after {time.monotonic() - started:.1f} s")
    assert db.execute("SELECT count(*) AS n FROM events WHERE message_id = %s AND event = 'accepted'",
                      (message_id,)).fetchone()["n"] == N


@pytest.fixture
def smtp_server(services, settings):
    ctx, client_ctx = loopback_contexts()
    submission = Submission.from_settings(settings, services.intake, services.accounts, services.redis,
                                          auth_failure_delay=0)
    with SubmissionServer(submission, ctx) as srv:
        yield srv, client_ctx
    submission.close()


def folded(name: str, value: str) -> str:
    """A header folded at spaces into lines of at most ~900 characters."""
    lines, line = [], f"{name}:"
    for word in value.split(" "):
        if len(line) + len(word) + 1 > 900:
            lines.append(line)
            line = ""
        line += " " + word
    return "\r\n".join([*lines, line]) + "\r\n"


@pytest.mark.timeout(300)
def test_smtp_send_to_1000_recipients_with_tracking_and_5kb_variables_each(tracking_on, services, account, domain,
                                                                           db, smtp_server, sink, relay):
    server, client_ctx = smtp_server
    services.accounts.create_credential(account["id"], domain["name"], "app", PASSWORD)
    login = f"app@{domain['name']}"
    body = (f"From: {login}\r\nTo: list@dest.test\r\nSubject: Big\r\n"
            # Over SMTP the body is sent as written, so a filled-in line must stay under 998 octets
            # (a longer one is refused at DATA): the 5 KB values carry line breaks.
            + folded("X-Mailgun-Recipient-Variables", json.dumps(variables(" \n")))
            + folded("X-Mailgun-Variables", json.dumps({"data": blob(9999)}))
            + f"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{HTML}\r\n").encode()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=120) as c:
        c.starttls(context=client_ctx)
        c.login(login, PASSWORD)
        c.mail(login)
        for i in range(N):
            assert c.rcpt(f"r{i}@dest.test")[0] == 250
        started = time.monotonic()
        code, reply = c.data(body)
        answered = time.monotonic() - started
    assert code == 250, reply
    message_id = reply.decode().rsplit("queued as ", 1)[1].strip().strip("<>")
    check_copies(delivered(sink, message_id), " \n")
    print(f"\nSMTP: 1,000 recipients answered in {answered:.2f} s, delivered after {time.monotonic() - started:.1f} s")
