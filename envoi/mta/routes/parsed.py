"""An inbound message in Mailgun's "fully parsed" form (what forward(url) and store(notify=) POST), and
the form encodings it travels in.

Fields: recipient, sender (MAIL FROM), from, subject, body-plain, stripped-text, stripped-signature,
body-html, stripped-html, message-headers (JSON list of [name, value], in order), content-id-map (JSON
{"<cid>": "attachment-N"}), attachment-count and the files attachment-1..N. Mailgun separates quoted
text with a trained model; Envoi strips what is plainly quoted (`>` lines, an "On ... wrote:" line
before them) and a signature after the "-- " line. A URL ending in `mime` gets `body-mime` (the raw
message) instead of the parsed bodies.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import secrets
from urllib.parse import urlencode

_ATTRIBUTION = re.compile(r"^\s*On .{0,300}wrote:\s*$", re.I)
_HTML_QUOTE = re.compile(r"<blockquote\b.*?</blockquote>", re.I | re.S)


def _text(part) -> str:
    try:
        return part.get_content()
    except (LookupError, ValueError, AssertionError):
        return (part.get_payload(decode=True) or b"").decode("utf-8", "replace")


def strip_text(plain: str) -> tuple[str, str]:
    """(the reply without quoted lines, the signature) of a text body."""
    lines = plain.replace("\r\n", "\n").split("\n")
    signature = ""
    if "-- " in lines:
        at = len(lines) - 1 - lines[::-1].index("-- ")
        signature = "\n".join(lines[at + 1:]).strip()
        lines = lines[:at]
    kept = [line for line in lines if not line.lstrip().startswith(">")]
    while kept and (not kept[-1].strip() or _ATTRIBUTION.match(kept[-1])):
        kept.pop()
    return "\n".join(kept).strip(), signature


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def header_pairs(msg) -> list[list[str]]:
    pairs = []
    for name, value in msg.items():
        try:
            pairs.append([name, str(value)])
        except Exception:  # a header the parser cannot decode: its raw text
            pairs.append([name, str(msg.get_all(name, [""])[0])])
    return pairs


def fields(raw: bytes, *, recipient: str, sender: str, mime: bool) -> tuple[dict[str, str], list[tuple]]:
    """(form fields, files [(field name, file name, content type, bytes)]) of Mailgun's POST."""
    msg = parse(raw)
    out = {"recipient": recipient, "sender": sender, "from": str(msg.get("From", "")),
           "subject": str(msg.get("Subject", ""))}
    if mime:
        out["body-mime"] = raw.decode("utf-8", "surrogateescape").encode("utf-8", "replace").decode("utf-8")
        return out, []
    plain_part, html_part = msg.get_body(("plain",)), msg.get_body(("html",))
    plain = _text(plain_part) if plain_part is not None else ""
    html = _text(html_part) if html_part is not None else ""
    if not plain and html:  # body-plain is always present (Mailgun makes one from the HTML)
        plain = re.sub(r"\s+\n", "\n", re.sub(r"<[^>]+>", "", html)).strip()
    stripped, signature = strip_text(plain)
    files, cid_map = [], {}
    for number, part in enumerate(msg.iter_attachments(), start=1):
        name = f"attachment-{number}"
        files.append((name, part.get_filename() or name, part.get_content_type(),
                      part.get_payload(decode=True) or b""))
        if part["Content-ID"]:
            cid_map[str(part["Content-ID"]).strip()] = name
    out.update({
        "body-plain": plain, "stripped-text": stripped, "stripped-signature": signature,
        "body-html": html, "stripped-html": _HTML_QUOTE.sub("", html),
        "message-headers": json.dumps(header_pairs(msg)), "content-id-map": json.dumps(cid_map),
        "attachment-count": str(len(files)),
    })
    return out, files


def encode(form: dict[str, str], files: list[tuple]) -> tuple[bytes, str]:
    """(body, Content-Type): urlencoded without files, multipart/form-data with them (as Mailgun)."""
    if not files:
        return urlencode(form).encode(), "application/x-www-form-urlencoded"
    boundary = "envoi-" + secrets.token_hex(16)
    chunks = []
    for name, value in form.items():
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'
                      f"Content-Type: text/plain; charset=utf-8\r\n\r\n".encode() + value.encode() + b"\r\n")
    for name, filename, content_type, data in files:
        safe = re.sub(r'["\\\x00-\x1f\x7f]', "_", filename)  # the sender's file name: no header injection
        ctype = re.sub(r"[^A-Za-z0-9!#$&^_.+/-]", "", content_type) or "application/octet-stream"
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{safe}"\r\n'
                      f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def stored_json(raw: bytes, *, recipient: str, sender: str, domain: str, message_url: str) -> dict:
    """A stored message as the Messages API and store(notify=) give it: the parsed fields, with
    `attachments` as a JSON list of {url, name, content-type, size} instead of files."""
    form, files = fields(raw, recipient=recipient, sender=sender, mime=False)
    for key in ("attachment-count", "content-id-map", "message-headers"):
        form.pop(key)
    msg = parse(raw)
    return {**form, "domain": domain, "recipients": recipient, "message-url": message_url,
            "message-headers": header_pairs(msg),
            "content-id-map": {str(p["Content-ID"]).strip(): f"{message_url}/attachments/{n}"
                               for n, p in enumerate(msg.iter_attachments()) if p["Content-ID"]},
            "attachments": [{"url": f"{message_url}/attachments/{n}", "name": name if name else f"attachment-{n + 1}",
                             "content-type": ctype, "size": len(data)}
                            for n, (_, name, ctype, data) in enumerate(files)]}
