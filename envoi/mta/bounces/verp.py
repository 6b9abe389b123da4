"""VERP return paths: the bounce address says which message (and recipient) bounced.

Two forms, both signed with a truncated HMAC-SHA256 over (domain, message, recipient) so that a
forged bounce cannot fail arbitrary recipients and an address is only valid at its own domain:

    bounce+<b32 message pk>.<b32 recipient id>.<mac>@<domain>   per recipient
    bounce+<b32 message pk>.<mac>@<domain>                      per message

Base32 is lower-case and unpadded (local parts are often lower-cased on the way back), the MAC is
8 base32 characters (40 bits: an online guess succeeds once in 10^12 tries).

Which form the relay uses (`envelope_sender`): a delivery is one SMTP transaction per (message,
recipient domain) with several RCPTs. A per-recipient VERP would force one transaction per
recipient, so:

* one recipient in the transaction (the usual transactional case): per-recipient VERP, free;
* several: per-message VERP, and the inbound listener identifies the recipient from the DSN's
  Original-Recipient / Final-Recipient among that message's recipients (and, if the message has
  a single recipient at all, that one). The trade-off: the per-message address is visible to
  every recipient of that message (Return-Path), so one of them could forge a DSN failing a
  co-recipient of the same message -- never anyone else's mail.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re

PREFIX = "bounce"
MAC_CHARS = 8
_LOCAL = re.compile(r"^bounce\+([a-z2-7]{1,13})(?:\.([a-z2-7]{1,13}))?\.([a-z2-7]{8})$")


def key_from_secret(secret_key: bytes) -> bytes:
    """The VERP signing key, derived from the region's secret key (ENVOI_SECRET_KEY)."""
    return hmac.new(secret_key, b"envoi/verp/v1", hashlib.sha256).digest()


# Two base32 characters per 10 bits, as base64.b32encode's own table: a number of up to 5 bytes is
# encoded with four lookups instead of b32encode's Python loop (3 calls per delivery on the event loop).
_PAIRS = [a + b for a in "abcdefghijklmnopqrstuvwxyz234567" for b in "abcdefghijklmnopqrstuvwxyz234567"]


def _b32(number: int) -> str:
    """Lower-case unpadded base32 of the number's big-endian bytes (at least one byte)."""
    size = max(1, (number.bit_length() + 7) // 8)
    if size > 5:
        return base64.b32encode(number.to_bytes(size, "big")).decode().rstrip("=").lower()
    return _b32_40(number << (40 - 8 * size), (8 * size + 4) // 5)


def _b32_40(value: int, chars: int) -> str:
    """The first `chars` characters of the base32 of a 40-bit value (5 bytes, big-endian)."""
    pairs = _PAIRS
    return (pairs[value >> 30] + pairs[(value >> 20) & 0x3FF] + pairs[(value >> 10) & 0x3FF]
            + pairs[value & 0x3FF])[:chars]


def _unb32(text: str) -> int | None:
    try:
        raw = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except (ValueError, TypeError):
        return None
    return int.from_bytes(raw, "big") if raw else None


@functools.lru_cache(maxsize=16)
def _keyed(key: bytes) -> hmac.HMAC:
    return hmac.new(key, digestmod=hashlib.sha256)


def _mac(key: bytes, domain: str, message_pk: int, recipient_id: int | None) -> str:
    payload = f"{domain.lower()}\0{message_pk}\0{'' if recipient_id is None else recipient_id}".encode()
    # A copy of the keyed HMAC, not hmac.digest(): that one-shot call releases the GIL around a
    # microsecond of work, and the relay's event loop (which signs every delivery) then waited for the
    # DKIM threads to hand the GIL back: ~0.3 ms per delivery in a profile of the relay under load.
    mac = _keyed(key).copy()
    mac.update(payload)
    return _b32_40(int.from_bytes(mac.digest()[:5], "big"), 8)


def return_path(domain: str, message_pk: int, recipient_id: int | None, key: bytes) -> str:
    """The per-recipient VERP address; recipient_id None gives the per-message form."""
    if message_pk <= 0 or (recipient_id is not None and recipient_id <= 0):
        raise ValueError("VERP ids must be positive")
    parts = [_b32(message_pk)]
    if recipient_id is not None:
        parts.append(_b32(recipient_id))
    parts.append(_mac(key, domain, message_pk, recipient_id))
    return f"{PREFIX}+{'.'.join(parts)}@{domain.lower()}"


def message_return_path(domain: str, message_pk: int, key: bytes) -> str:
    """The per-message VERP address (several recipients in one transaction)."""
    return return_path(domain, message_pk, None, key)


def envelope_sender(domain: str, message_pk: int, recipient_ids: list[int], key: bytes) -> str:
    """MAIL FROM for one delivery: per-recipient VERP if it has one recipient, else per-message."""
    if len(recipient_ids) == 1:
        return return_path(domain, message_pk, recipient_ids[0], key)
    return message_return_path(domain, message_pk, key)


def looks_like_verp(address: str) -> bool:
    return address.lower().startswith(PREFIX + "+")


def parse(address: str, key: bytes) -> tuple[int, int | None] | None:
    """(message pk, recipient id or None for the per-message form), or None if not ours / forged."""
    if not isinstance(address, str) or len(address) > 320:
        return None
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at or not domain:
        return None
    match = _LOCAL.match(local.lower())
    if match is None:
        return None
    message_pk = _unb32(match.group(1))
    recipient_id = _unb32(match.group(2)) if match.group(2) else None
    if message_pk is None or (match.group(2) and recipient_id is None):
        return None
    expected = _mac(key, domain, message_pk, recipient_id)
    if not hmac.compare_digest(expected, match.group(3)):
        return None
    return message_pk, recipient_id
