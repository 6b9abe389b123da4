"""Helpers for tests that call the HTTP API through falcon's in-process client."""

from __future__ import annotations

import email
import email.policy
from urllib.parse import urlencode

from tests.conftest import basic


def post_form(client, url, key=None, params=None):
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if key:
        headers.update(basic(key))
    return client.simulate_post(url, body=urlencode(params or {}, doseq=True), headers=headers)


def stored_mime(services, db, message_id) -> email.message.EmailMessage:
    row = db.execute("SELECT body, storage_key FROM messages WHERE message_id = %s", (message_id,)).fetchone()
    raw = services.sealer.open(row["body"], row["storage_key"].encode())
    return email.message_from_bytes(raw, policy=email.policy.default)
