"""Routing, never transfer: an SMTP login or a dashboard email of the other region gets an answer naming
that region's host, and neither region keeps anything of the request (rows, Redis keys)."""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import urlencode

import pytest
import trustme
from falcon import testing

from envoi.accounts import routing
from envoi.api.app import create_app
from envoi.mta.submission.server import AUTH_INVALID, Submission, SubmissionServer
from tests.support.dashboard import ORIGIN
from tests.support.region_routing import ROUTING_SECRET, footprint

PASSWORD = "correct-horse-9"


@pytest.fixture(scope="module")
def us_people(routed_regions):
    """A US account with an SMTP login and a dashboard user."""
    _, us = routed_regions
    account = us.accounts.create_account(f"us-{uuid.uuid4().hex[:6]}")
    domain = us.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.us.test", dkim_key_size=1024,
                                    verified=True)
    us.accounts.create_credential(account["id"], domain["name"], "app", PASSWORD)
    email = f"Owner-{uuid.uuid4().hex[:6]}@people.test"
    _, token = us.users.invite(account["id"], email, "admin", actor="test")
    us.users.accept_invitation(token, "correct horse battery")
    return {"smtp_login": f"app@{domain['name']}", "email": email}


@pytest.fixture(scope="module")
def eu_smtp(routed_regions):
    eu, _ = routed_regions
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    submission = Submission.from_settings(eu.settings, eu.intake, eu.accounts, eu.redis, router=eu.router,
                                          auth_failure_delay=0)
    with SubmissionServer(submission, server_ctx) as server:
        yield server, client_ctx
    submission.close()


def smtp_auth(server, ctx, login: str, password: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as c:
        c.starttls(context=ctx)
        c.ehlo()
        try:
            c.login(login, password)
            return 235, ""
        except smtplib.SMTPAuthenticationError as ex:
            return ex.smtp_code, ex.smtp_error.decode()


def test_an_smtp_login_of_the_other_region_is_told_the_right_host_and_nothing_is_kept(routed_regions, us_people, eu_smtp):
    eu, us = routed_regions
    server, ctx = eu_smtp
    before = footprint(eu), footprint(us)
    code, text = smtp_auth(server, ctx, us_people["smtp_login"].upper(), "any password at all")
    assert code == 535
    assert "5.7.8" in text and "US region" in text and "smtp.us.envoi.test:587" in text
    assert (footprint(eu), footprint(us)) == before  # no throttle key, no row, on either side

    code, text = smtp_auth(server, ctx, f"nobody@{uuid.uuid4().hex[:6]}.test", "any password at all")
    assert (code, text) == (535, AUTH_INVALID[4:])  # a login of no region: the plain failure
    assert footprint(eu)[1] > before[0][1]  # ...which is counted (a throttle key): the footprint sees keys


def test_a_dashboard_email_of_the_other_region_is_told_the_right_dashboard_and_nothing_is_kept(routed_regions, us_people):
    eu, us = routed_regions
    client = testing.TestClient(create_app(eu.settings, eu))
    us_login = f"{us.settings.public_url}/dashboard/login"
    before = footprint(eu), footprint(us)
    resp = client.simulate_post("/dashboard/login", body=urlencode(
        {"email": us_people["email"].lower(), "password": "whatever it is"}),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": ORIGIN})
    assert resp.status_code == 401 and "set-cookie" not in resp.headers
    assert "This account is in the US region" in resp.text and f'href="{us_login}"' in resp.text
    assert (footprint(eu), footprint(us)) == before


def test_the_sign_in_page_names_its_region_and_links_to_the_other(routed_regions):
    eu, us = routed_regions
    page = testing.TestClient(create_app(eu.settings, eu)).simulate_get("/dashboard/login")
    assert page.status_code == 200
    assert "Region: <strong>EU</strong>" in page.text
    assert f'<a href="{us.settings.public_url}/dashboard/login">Switch to US</a>' in page.text


def test_a_peer_that_does_not_answer_means_a_plain_failure_within_the_timeout(routed_regions, us_people):
    eu, _ = routed_regions
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the kernel does) and never answers
    try:
        router = routing.RegionRouter(eu.db, "eu", ROUTING_SECRET, {"us": f"http://127.0.0.1:{silent.getsockname()[1]}"},
                                      timeout=0.5)
        started = time.monotonic()
        assert router.home_of("smtp", us_people["smtp_login"]) is None
        assert time.monotonic() - started < 2
        down = routing.RegionRouter(eu.db, "eu", ROUTING_SECRET, {"us": "http://127.0.0.1:1"}, timeout=0.5)
        assert down.home_of("user", us_people["email"]) is None
    finally:
        silent.close()


def lookup(url: str, body: bytes, timestamp: str, signature: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/v1/regions/lookup", data=body, method="POST", headers={
        "Content-Type": "application/json", "X-Envoi-Timestamp": timestamp, "X-Envoi-Signature": signature})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as ex:
        return ex.code, json.loads(ex.read())


def test_the_lookup_answers_only_signed_fresh_questions_and_only_yes_or_no(routed_regions, us_people):
    eu, us = routed_regions
    url = eu.settings.routing_peer_urls["us"]
    digest = routing.login_digest(ROUTING_SECRET, "user", us_people["email"].lower()).hex()
    body = json.dumps({"kind": "user", "digest": digest}).encode()
    now = str(int(time.time()))
    assert lookup(url, body, now, routing.sign(ROUTING_SECRET, now, body)) == (200, {"known": True})
    other = json.dumps({"kind": "smtp", "digest": digest}).encode()  # the same hash as a login of another kind
    assert lookup(url, other, now, routing.sign(ROUTING_SECRET, now, other)) == (200, {"known": False})
    stale = str(int(time.time()) - 600)
    for timestamp, signature in ((now, routing.sign(b"x" * 40, now, body)), (stale, routing.sign(ROUTING_SECRET, stale, body)),
                                 (now, "")):
        status, reply = lookup(url, body, timestamp, signature)
        assert status == 401 and reply == {"message": "Invalid region lookup"}


def test_logins_no_region_could_hold_are_not_asked_about(routed_regions):
    eu, _ = routed_regions
    for hostile in ("", "a\x00b@x.test", "\ud800@x.test", "x" * 400 + "@x.test"):
        assert eu.router.home_of("smtp", hostile) is None and eu.router.home_of("user", hostile) is None
