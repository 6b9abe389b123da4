"""Identifiers: message ids, event ids, keys."""

from __future__ import annotations

import secrets
import time


def message_id(domain: str) -> str:
    """A Message-ID local part in Mailgun's style, without brackets: 20240101120000.abc@domain."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    return f"{stamp}.{secrets.token_hex(8)}@{domain}"


def event_id() -> str:
    return secrets.token_urlsafe(16)


def storage_key() -> str:
    return secrets.token_urlsafe(24)


def token(nbytes: int = 24) -> str:
    return secrets.token_urlsafe(nbytes)
