"""X-Mailgun-* option headers of SMTP submission: read them into send fields, strip them from the MIME.

Mailgun lets SMTP senders set the send API's o:/v: options with headers. They are read from the
raw header block (bytes, so folded headers, odd spacing and non-UTF-8 values are handled without a
re-serialisation that could change the message) and removed from what is stored and delivered:
they are instructions to us, not part of the message.
"""

from __future__ import annotations

import contextlib
import email.header
import json
import re

from envoi.mta import jsonvalues, substitution

PREFIX = b"x-mailgun-"
# Header name (lower case, without the prefix) -> send field. X-Mailgun-Tag may repeat and may hold a
# comma list; the others keep their last value, like repeated form fields.
OPTION_FIELDS = {
    "tag": "o:tag",
    "dkim": "o:dkim",
    "deliver-by": "o:deliverytime",
    "drop-message": "o:testmode",
    "track": "o:tracking",
    "track-clicks": "o:tracking-clicks",
    "track-opens": "o:tracking-opens",
    "sending-ip": "o:sending-ip",
    "sending-ip-pool": "o:sending-ip-pool",
    "require-tls": "o:require-tls",
    "skip-verification": "o:skip-verification",
    # A stored template (envoi.mta.templated renders it at accept).
    "template-name": "template",
    "template-version": "t:version",
    "template-variables": "t:variables",
}
_FOLD = re.compile(rb"\r\n(?=[ \t])")


def split_head(mime: bytes) -> tuple[bytes, bytes]:
    """(header block including its last CRLF, the rest from the blank line on). CRLF input only."""
    if mime.startswith(b"\r\n"):
        return b"", mime
    end = mime.find(b"\r\n\r\n")
    if end < 0:
        # Headers only: add the blank line a message needs so downstream parsing stays simple.
        head = mime if mime.endswith(b"\r\n") else mime + b"\r\n"
        return head, b"\r\n"
    return mime[: end + 2], mime[end + 2 :]


def header_fields(head: bytes) -> list[bytes]:
    """The header block as raw fields, each with its folded continuation lines and no final CRLF."""
    fields: list[bytes] = []
    for line in head.split(b"\r\n")[:-1] if head.endswith(b"\r\n") else head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    return fields


def _name(field: bytes) -> bytes:
    return field.split(b":", 1)[0].strip().lower() if b":" in field else b""


def _value(field: bytes) -> str:
    raw = _FOLD.sub(b"", field.split(b":", 1)[1]).strip()  # unfold: drop CRLF, keep the whitespace
    text = raw.decode("utf-8", "replace")
    if "=?" in text:
        with contextlib.suppress(ValueError, LookupError):
            text = str(email.header.make_header(email.header.decode_header(text)))
    return text


def extract(mime: bytes) -> tuple[bytes, dict[str, list[str]], dict | None]:
    """Strip every X-Mailgun-* header; return (mime, send fields, recipient variables or None).

    Raises InvalidMessage for option values that cannot be honoured (bad JSON, control characters).
    """
    head, rest = split_head(mime)
    if head and PREFIX not in head.lower():  # no option header (most messages): one C-speed scan, nothing rebuilt
        return head + rest, {}, None
    kept: list[bytes] = []
    fields: dict[str, list[str]] = {}
    recipient_variables: dict | None = None
    for field in header_fields(head):
        name = _name(field)
        if not name.startswith(PREFIX):
            kept.append(field)
            continue
        option = name[len(PREFIX):].decode("ascii", "replace")
        value = _value(field)
        if option == "variables":
            for key, val in jsonvalues.load_object(value, "X-Mailgun-Variables").items():
                fields.setdefault(f"v:{key}", []).append(val if isinstance(val, str) else json.dumps(val))
        elif option == "recipient-variables":
            recipient_variables = substitution.load(value, "X-Mailgun-Recipient-Variables")
        elif option == "tag":
            fields.setdefault("o:tag", []).extend(t.strip() for t in value.split(",") if t.strip())
        elif option in OPTION_FIELDS:
            fields.setdefault(OPTION_FIELDS[option], []).append(value)
        # Any other X-Mailgun-* header (Deliver-Within, ...) is dropped unread.
    stripped = b"".join(f + b"\r\n" for f in kept) + rest
    return stripped, fields, recipient_variables

