"""Defensive MIME helpers shared by the DSN and ARF parsers: bounded, never raising on bad input."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from email.header import decode_header, make_header
from email.message import Message

#: The most of a report we look at. Reports that embed a whole original message are cut here;
#: what we need (the report part, the original's headers) comes first in every real report.
MAX_REPORT_BYTES = 256 * 1024
MAX_FIELD_BLOCKS = 200
MAX_PARTS = 50

_ADDRESS = re.compile(r"<?([^<>\s;,\"]+@[^<>\s;,\"]+?)>?(?=$|[\s;,>])")


def parse_message(raw: bytes | str) -> Message | None:
    """A compat32 Message of at most MAX_REPORT_BYTES, or None if it cannot be parsed at all."""
    try:
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        if not isinstance(raw, bytes | bytearray | memoryview):
            return None
        data = bytes(raw[:MAX_REPORT_BYTES])
        return email.message_from_bytes(data, policy=email.policy.compat32)
    except Exception:
        return None


def walk(message: Message) -> list[Message]:
    """Parts depth-first, bounded."""
    out: list[Message] = []
    stack = [message]
    while stack and len(out) < MAX_PARTS:
        part = stack.pop(0)
        out.append(part)
        try:
            if part.is_multipart():
                payload = part.get_payload()
                if isinstance(payload, list):
                    stack[0:0] = [p for p in payload if isinstance(p, Message)]
        except Exception:
            continue
    return out


def content_type(part: Message) -> str:
    try:
        return (part.get_content_type() or "").lower()
    except Exception:
        return ""


def param(part: Message, name: str) -> str:
    try:
        value = part.get_param(name)
        if isinstance(value, tuple):  # RFC 2231
            value = email.utils.collapse_rfc2231_value(value)
        return str(value or "").strip().lower()
    except Exception:
        return ""


def header(message: Message | None, name: str) -> str:
    """A header decoded to str (RFC 2047), whitespace folded, '' if absent or broken."""
    if message is None:
        return ""
    try:
        value = message.get(name)
        if value is None:
            return ""
        try:
            value = str(make_header(decode_header(str(value))))
        except Exception:
            value = str(value)
        return " ".join(value.split())[:2000]
    except Exception:
        return ""


def part_text(part: Message) -> str:
    """The decoded text of a non-multipart part (or of a parsed message/* part, re-serialised)."""
    try:
        payload = part.get_payload()
        if isinstance(payload, list):
            # message/rfc822, message/delivery-status, ... were parsed into sub-messages.
            chunks = []
            for sub in payload:
                if isinstance(sub, Message):
                    chunks.append("".join(f"{k}: {v}\n" for k, v in sub.items()))
                    body = sub.get_payload()
                    if isinstance(body, str) and body.strip():
                        chunks.append(body)
            return "\n".join(chunks)
        data = part.get_payload(decode=True)
        if data is None:
            return payload if isinstance(payload, str) else ""
        charset = part.get_content_charset() or "utf-8"
        try:
            return data.decode(charset, "replace")
        except LookupError:
            return data.decode("utf-8", "replace")
    except Exception:
        return ""


def field_blocks(text: str) -> list[dict[str, str]]:
    """RFC 3464/5965 style "Name: value" blocks separated by blank lines; names lower-cased.

    Continuation lines are folded; a repeated name keeps the first value except for names listed in
    MULTI (collected comma-separated as RFC 5965 allows repeats, e.g. Original-Rcpt-To)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = None
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")[:5000]:
        if not line.strip():
            if current:
                blocks.append(current)
                if len(blocks) >= MAX_FIELD_BLOCKS:
                    return blocks
            current, last = {}, None
            continue
        if line[:1] in (" ", "\t") and last is not None:
            current[last] = (current[last] + " " + line.strip())[:2000]
            continue
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not name or " " in name:
            last = None
            continue
        value = value.strip()[:2000]
        if name in MULTI and name in current:
            current[name] = current[name] + ", " + value
        elif name not in current:
            current[name] = value
        last = name
    if current:
        blocks.append(current)
    return blocks


MULTI = {"original-rcpt-to", "reported-uri", "source-ip"}


def address_of(value: str) -> str:
    """The address in "rfc822; user@example.com" / "<user@example.com>" / "Name <u@e>", lower-cased."""
    if not value:
        return ""
    _, semi, rest = value.partition(";")
    text = rest if semi else value
    match = _ADDRESS.search(text.strip())
    return match.group(1).strip().lower()[:320] if match else ""


def message_id_of(value: str) -> str:
    """A Message-ID without angle brackets or surrounding whitespace."""
    value = (value or "").strip()
    match = re.search(r"<([^<>\s]+)>", value)
    if match:
        return match.group(1)[:500]
    return value.split()[0][:500] if value.split() else ""


def original_message(parts: list[Message]) -> Message | None:
    """The returned message (or just its headers) inside a DSN or ARF report."""
    for part in parts:
        kind = content_type(part)
        if kind in ("message/rfc822", "message/global"):
            try:
                payload = part.get_payload()
                if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                    return payload[0]
            except Exception:
                continue
        if kind in ("text/rfc822-headers", "message/rfc822-headers", "message/global-headers"):
            parsed = parse_message(part_text(part).lstrip("\r\n").encode("utf-8", "replace"))
            if parsed is not None:
                return parsed
    return None
