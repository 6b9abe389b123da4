"""The HTTP API through falcon's in-process client: the shared `client` fixture and the send helpers.

The fixtures are registered as a plugin in tests/conftest.py. `client` serves `create_app(api_settings,
api_services)`; a module that needs other settings overrides `api_settings` (tests/integration/
test_domain_verification.py), one that needs other services overrides `api_services`
(tests/integration/webhooks/test_webhooks.py), and the shared client picks them up.
"""

from __future__ import annotations

import email
import email.policy
import uuid
from typing import NamedTuple
from urllib.parse import urlencode

import pytest
from falcon import testing

from envoi.api.app import create_app
from tests.conftest import basic

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def api_services(services):
    """The services the API under test runs on: the session's unless a module overrides this."""
    return services


@pytest.fixture
def api_settings(api_services):
    """The settings the API under test runs with: its services' own unless a module overrides this."""
    return api_services.settings


@pytest.fixture
def client(api_settings, api_services) -> testing.TestClient:
    return testing.TestClient(create_app(api_settings, api_services))


class Sent(NamedTuple):
    json: dict
    message_id: str  # without the angle brackets


def post_form(client, url, key=None, params=None):
    headers = dict(FORM)
    if key:
        headers.update(basic(key))
    return client.simulate_post(url, body=urlencode(params or {}, doseq=True), headers=headers)


def send_form(client, key, domain, **fields):
    """POST /v3/<domain>/messages as a form with the domain's key; `fields` add to or replace a minimal
    valid message (pass Mailgun's `o:`/`h:`/`v:` names as `**{"o:tag": ...}`). `domain` is the domain's
    row or its name. Returns the response."""
    name = domain_name(domain)
    params = {"from": f"s@{name}", "to": "rcpt@dest.test", "subject": "Hi", "text": "body", **fields}
    return post_form(client, f"/v3/{name}/messages", key, params)


def send_mime(client, key, domain, mime: str, to: str = "rcpt@dest.test", **fields):
    """POST /v3/<domain>/messages.mime with the whole message as the `message` form field."""
    return post_form(client, f"/v3/{domain_name(domain)}/messages.mime", key, {"to": to, "message": mime, **fields})


def domain_name(domain) -> str:
    return domain if isinstance(domain, str) else domain["name"]


def multipart(fields, files=()) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type. `fields`: (name, value) pairs (a dict's items()
    will do); `files`: (name, filename or None, content type, bytes)."""
    boundary = uuid.uuid4().hex  # random, so that no file's bytes can contain it by chance
    out = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
           for name, value in fields]
    for name, filename, ctype, data in files:
        fn = f'; filename="{filename}"' if filename else ""
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{fn}\r\n'
                   f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def accepted(resp) -> Sent:
    assert resp.status_code == 200, resp.text
    return Sent(resp.json, resp.json["id"].strip("<>"))


@pytest.fixture
def send(client, api_key, domain):
    """Send over the API as the test's `domain` with its `api_key`; asserts the 200 and returns Sent."""
    def send(**fields) -> Sent:
        return accepted(send_form(client, api_key, domain, **fields))
    return send


def stored_mime(services, db, message_id) -> email.message.EmailMessage:
    row = db.execute("SELECT body, storage_key FROM messages WHERE message_id = %s", (message_id,)).fetchone()
    raw = services.sealer.open(row["body"], row["storage_key"].encode())
    return email.message_from_bytes(raw, policy=email.policy.default)
