"""The dashboard's gate: sign-in with the session cookie, roles, CSRF and same-origin checks, the
security headers of every page, and errors as pages."""

from __future__ import annotations

import re
from urllib.parse import urlencode

from envoi.accounts import sessions
from envoi.api.dashboard import security
from tests.support.dashboard import ORIGIN, PASSWORD, operator_of, signed_in, user_of


def login_form(client, email, password, **extra):
    body = urlencode({"email": email, "password": password, "next": "/dashboard/logs", **extra})
    return client.simulate_post("/dashboard/login", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Origin": ORIGIN})


def test_a_stranger_is_sent_to_the_login_page_with_where_they_were_going(client):
    resp = client.simulate_get("/dashboard/overview", query_string="resolution=day")
    assert resp.status_code == 303
    assert resp.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Foverview%3Fresolution%3Dday"


def test_signing_in_sets_a_host_only_secure_httponly_samesite_cookie_bound_to_a_live_session(client, services, account):
    email, password = user_of(services, account, "analyst")
    resp = login_form(client, email, password)
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/logs"
    cookie = resp.headers["set-cookie"]
    assert cookie.startswith(sessions.COOKIE_NAME + "=")
    for attribute in ("Path=/", "Secure", "HttpOnly", "SameSite=Lax"):
        assert attribute in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    assert services.sessions.resolve(token)["email"] == email
    page = client.simulate_get("/dashboard/overview", cookies={sessions.COOKIE_NAME: token})
    assert page.status_code == 200 and email in page.text


def test_a_wrong_password_signs_nobody_in_and_says_so_without_saying_which_part_was_wrong(client, services, account):
    email, _ = user_of(services, account)
    resp = login_form(client, email, "not the password")
    assert resp.status_code == 401 and "set-cookie" not in resp.headers
    assert "Invalid email, password or code" in resp.text or "Invalid" in resp.text
    unknown = login_form(client, "nobody@people.test", "not the password")
    assert unknown.status_code == 401 and _error(unknown.text) == _error(resp.text)


def test_a_login_from_another_site_is_refused(client, services, account):
    email, password = user_of(services, account)
    body = urlencode({"email": email, "password": password})
    resp = client.simulate_post("/dashboard/login", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Origin": "https://evil.test"})
    assert resp.status_code == 403 and "set-cookie" not in resp.headers
    resp = client.simulate_post("/dashboard/login", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"})
    assert resp.status_code == 403 and "set-cookie" not in resp.headers


def test_next_never_leads_off_the_dashboard(client, services, account):
    email, password = user_of(services, account)
    for target in ("https://evil.test/", "//evil.test/x", "/dashboard\\@evil.test", "/v3/x"):
        resp = login_form(client, email, password, next=target)
        assert resp.headers["location"] == "/dashboard", target


def test_a_form_without_the_sessions_csrf_token_changes_nothing(client, services, account):
    page = signed_in(client, services, *user_of(services, account))
    for fields, origin in (({"csrf_token": "forged"}, ORIGIN), ({}, ORIGIN)):
        resp = page.post("/dashboard/logout", fields, csrf=False, origin=origin)
        assert resp.status_code == 403 and "did not come from this dashboard" in resp.text
        assert services.sessions.resolve(page.token) is not None
    resp = page.post("/dashboard/logout", origin="https://evil.test")
    assert resp.status_code == 403 and services.sessions.resolve(page.token) is not None


def test_signing_out_ends_the_session_on_the_server(client, services, account):
    page = signed_in(client, services, *user_of(services, account))
    resp = page.post("/dashboard/logout")
    assert resp.status_code == 303 and "Max-Age=0" in resp.headers["set-cookie"]
    assert services.sessions.resolve(page.token) is None
    assert page.get("/dashboard/overview").status_code == 303


def test_every_page_response_carries_the_strict_policy(client, services, account):
    page = signed_in(client, services, *user_of(services, account))
    for path in ("/dashboard/overview", "/dashboard/login", "/dashboard/no-such-page"):
        resp = page.get(path)
        assert resp.headers["content-security-policy"] == security.PAGE_POLICY, path
        assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]
        assert "'unsafe-inline'" not in resp.headers["content-security-policy"]
        assert resp.headers["x-frame-options"] == "DENY" and resp.headers["cache-control"] == "no-store"
        assert not re.search(r"<script(?![^>]*\bsrc=)", resp.text), "inline script in " + path
        assert " style=" not in resp.text, "inline style in " + path


def test_a_role_without_the_permission_gets_a_403_page_not_the_data(client, services, account):
    page = signed_in(client, services, *user_of(services, account, "billing"))
    resp = page.get("/dashboard/overview")
    assert resp.status_code == 403 and resp.content_type.startswith("text/html")
    assert "may not read stats" in resp.text and "Sending" not in resp.text
    assert 'href="/dashboard/overview"' not in resp.text  # the menu hides what the role cannot open


def test_operators_do_not_see_customer_pages_and_customers_do_not_see_operator_pages(client, services, account):
    operator = signed_in(client, services, *operator_of(services))
    assert operator.get("/dashboard/overview").status_code == 404
    assert operator.get("/dashboard").headers["location"] == "/dashboard/operator"


def test_an_expired_session_is_a_new_sign_in(client, services, account, db):
    page = signed_in(client, services, *user_of(services, account))
    db.execute("UPDATE user_sessions SET last_seen_at = now() - interval '31 minutes'")
    assert page.get("/dashboard/overview").status_code == 303


def test_static_files_are_served_with_a_content_hash_and_long_cache(client):
    from envoi.api.dashboard.static import asset_url

    url = asset_url("dashboard.js")
    resp = client.simulate_get(url.split("?")[0])
    assert resp.status_code == 200 and "addEventListener" in resp.text
    assert "immutable" in resp.headers["cache-control"]
    assert client.simulate_get("/dashboard/static/../../etc/passwd").status_code == 404


def test_password_is_never_echoed(client, services, account):
    email, _ = user_of(services, account)
    resp = login_form(client, email, PASSWORD + "x")
    assert PASSWORD not in resp.text


def _error(text: str) -> str:
    return re.search(r'class="error" role="alert">([^<]*)<', text).group(1)
