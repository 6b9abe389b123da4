"""The dashboard under test: signed-in users through falcon's in-process client, and the whole app on a
real loopback HTTP server for the browser (Playwright drives Chromium against it).

`user_of(services, account, role)` makes a person through the real invitation flow;
`signed_in(client, services, email, password)` returns a Page client that carries the session cookie,
the Origin of the dashboard and the session's CSRF token on every form, as a browser would.
"""

from __future__ import annotations

import uuid
from socketserver import ThreadingMixIn
from urllib.parse import urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from envoi.accounts import sessions
from envoi.api.app import create_app
from tests.support.servers import serve_in_background, shutdown

PASSWORD = "correct horse battery"
HOST = "falconframework.org"  # falcon's TestClient's Host
ORIGIN = f"http://{HOST}"


def user_of(services, account: dict, role: str = "admin") -> tuple[str, str]:
    """(email, password) of a new user of ACCOUNT with ROLE, made by invitation as in production."""
    email = f"{role}-{uuid.uuid4().hex[:6]}@people.test"
    _, token = services.users.invite(account["id"], email, role, actor="test")
    services.users.accept_invitation(token, PASSWORD)
    return email, PASSWORD


def operator_of(services) -> tuple[str, str]:
    email = f"op-{uuid.uuid4().hex[:6]}@platform.test"
    services.users.create_operator(email, PASSWORD)
    return email, PASSWORD


class Page:
    """A signed-in browser, as far as the server can tell: cookie, Origin and CSRF token."""

    def __init__(self, client, token: str):
        self.client = client
        self.token = token
        self.csrf = sessions.csrf_token(token)

    @property
    def cookies(self) -> dict:
        return {sessions.COOKIE_NAME: self.token}

    def get(self, path: str, **params):
        query = urlencode(params, doseq=True, encoding="utf-8", errors="surrogatepass") if params else None
        return self.client.simulate_get(path, query_string=query, cookies=self.cookies)

    def post(self, path: str, data: dict | None = None, *, csrf: bool = True, origin: str | None = ORIGIN,
             **kwargs):
        fields = dict(data or {})
        if csrf:
            fields.setdefault("csrf_token", self.csrf)
        headers = {"Content-Type": "application/x-www-form-urlencoded", **kwargs.pop("headers", {})}
        if origin is not None:
            headers["Origin"] = origin
        return self.client.simulate_post(path, body=urlencode(fields, doseq=True, encoding="utf-8", errors="surrogatepass"), headers=headers,
                                         cookies=self.cookies, **kwargs)


def signed_in(client, services, email: str, password: str) -> Page:
    _, token = services.users.login(email, password, ip="127.0.0.1")
    return Page(client, token)


@pytest.fixture
def page_as(client, services, account):
    """page_as(role) -> a Page signed in as a new user of `account` with that role."""
    def make(role: str = "admin", of: dict | None = None) -> Page:
        return signed_in(client, services, *user_of(services, of or account, role))
    return make


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def live_url(api_settings, api_services):
    """The API and dashboard on a real HTTP server on loopback; yields its base URL."""
    server = make_server("127.0.0.1", 0, create_app(api_settings, api_services),
                         server_class=_ThreadingServer, handler_class=_QuietHandler)
    serve_in_background(server, name="live-dashboard")
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        shutdown(server)
        server.server_close()


def sign_in(page, base_url: str, email: str, password: str, *, then: str = "/dashboard") -> None:
    """Sign in through the login form in a real browser page (Playwright), landing on THEN."""
    page.goto(f"{base_url}/dashboard/login?next={then}")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("main button[type=submit]")
    page.wait_for_load_state()
