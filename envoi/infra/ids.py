"""Identifiers: message ids, event ids, keys."""

from __future__ import annotations

import base64
import secrets
import time

from envoi.infra.entropy import random_bytes


def message_id(domain: str) -> str:
    """A Message-ID local part in Mailgun's style, without brackets: 20240101120000.abc@domain."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    return f"{stamp}.{random_bytes(8).hex()}@{domain}"


def _urlsafe(nbytes: int) -> str:
    """secrets.token_urlsafe(nbytes), from the buffered draw (one per accepted message for each id)."""
    return base64.urlsafe_b64encode(random_bytes(nbytes)).rstrip(b"=").decode("ascii")


def event_id() -> str:
    return _urlsafe(16)


def storage_key() -> str:
    return _urlsafe(24)


def token(nbytes: int = 24) -> str:
    return secrets.token_urlsafe(nbytes)
