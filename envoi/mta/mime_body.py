"""The MIME body of a composed message, written as bytes: exactly what the email package writes.

compose() used to build every body through EmailMessage (set_content, add_alternative, add_related,
add_attachment, as_bytes with email.policy.SMTP at 998 octets a line); that was about a third of the
API's CPU per message (header objects parsed and refolded, the generator's buffers). This module
writes the same bytes for the shapes the send API makes — a text, html or amp body, their
alternatives, inline images (related) and attachments (mixed) — by doing the same steps on plain
lists: the same headers in the same order (the email package's quirks included: MIME-Version on
each part it added, none on a part it moved), the same transfer encodings (7bit, 8bit, base64 lines
of 996 characters) and the same boundaries (drawn from `random` in the generator's order and
checked against the parts as it checks them).

Where a shape or a value could come out differently (a body line over 998 octets, which the email
package encodes as quoted-printable or base64 by a heuristic; a file name that its header parser
would rewrite; an unusual media type), build() returns None and the caller uses the email package.
tests/unit/mta/test_mime_body.py compares both writers on generated messages, byte for byte.
"""

from __future__ import annotations

import binascii
import random
import re
import sys
import urllib.parse

MAX_LINE = 998  # email.policy.SMTP cloned with max_line_length=998 (envoi.mta.compose.SMTP_POLICY)
_BASE64_CHUNK = MAX_LINE // 4 * 3  # input bytes per base64 line, as email.contentmanager._encode_base64
_WIDTH = len(repr(sys.maxsize - 1))  # email.generator's boundary token width
# Media types and file names whose header the email package writes back exactly as given (what its
# header parser would rewrite, or fold, goes to it instead).
_MEDIA_TOKEN = re.compile(r"[a-z0-9][a-z0-9.+-]{0,62}")
_PLAIN_NAME = re.compile(r"[!#-\[\]-~]+(?: [!#-\[\]-~]+)*")  # printable ASCII but quote and backslash
_MAX_FIELD = 900  # a header this long might be folded: left to the email package


class _Part:
    """One MIME part as EmailMessage keeps it: its header fields in order and its payload (bytes as
    written, or a list of parts for a multipart)."""

    __slots__ = ("headers", "payload")

    def __init__(self, headers: list[list[str]], payload: bytes | list[_Part]):
        self.headers = headers
        self.payload = payload

    def subtype(self) -> str | None:
        return self.headers_value("content-type").partition("multipart/")[2] or None \
            if isinstance(self.payload, list) else None

    def headers_value(self, name: str) -> str:
        return next(v for n, v in self.headers if n.lower() == name)


def build(text: str | None, html: str | None, amp: str | None,
          inlines: list[tuple[str, str, str, bytes]], attachments: list[tuple[str, str, str, bytes]]) -> bytes | None:
    """The body (its MIME header fields, a blank line, the content) that compose's email-package path
    writes for these bodies, inline parts and attachments ((maintype, subtype, file name, data) each);
    None when this writer does not cover the message (the caller then uses the email package)."""
    if text is not None:
        top = _text_part("plain", text, True)
        alternatives = [("x-amp-html", amp), ("html", html)]
    elif amp is not None:
        top = _text_part("x-amp-html", amp, True)
        alternatives = [("html", html)]
    else:
        top = _text_part("html", html, True)
        alternatives = []
    if top is None:
        return None
    html_part = top if text is None and amp is None else None
    for subtype, body in alternatives:
        if body is None:
            continue
        part = _text_part(subtype, body, True)
        if part is None:
            return None
        _add(top, "alternative", part)
        if subtype == "html":
            html_part = part
    if inlines:
        target = html_part if html_part is not None else top
        if target.subtype() in ("alternative", "mixed"):
            return None  # the email package refuses to make related of these (ValueError): its error
        for maintype, subtype, name, data in inlines:
            part = _bytes_part(maintype, subtype, data, "inline", name, cid=f"<{name}>")
            if part is None:
                return None
            _add(target, "related", part)
    for maintype, subtype, name, data in attachments:
        part = _bytes_part(maintype, subtype, data, "attachment", name)
        if part is None:
            return None
        _add(top, "mixed", part)
    return _render(top)


def _text_part(subtype: str, text: str, mime_version: bool) -> _Part | None:
    """email.contentmanager.set_text_content with charset utf-8, where it picks 7bit or 8bit."""
    try:
        data = text.encode()
    except UnicodeEncodeError:
        return None  # a lone surrogate: the email package raises, and says so
    lines = data.splitlines()
    if lines and max(map(len, lines)) > MAX_LINE:
        return None  # quoted-printable or base64, by the email package's own heuristic
    headers = [["Content-Type", f'text/{subtype}; charset="utf-8"'],
               ["Content-Transfer-Encoding", "7bit" if data.isascii() else "8bit"]]
    if mime_version:
        headers.append(["MIME-Version", "1.0"])
    return _Part(headers, b"\r\n".join(lines) + b"\r\n")


def _bytes_part(maintype: str, subtype: str, data: bytes, disposition: str, filename: str,
                cid: str | None = None) -> _Part | None:
    """email.contentmanager.set_bytes_content (base64) with a disposition and file name, as added by
    add_related / add_attachment (a part of its own: MIME-Version last)."""
    if not (_MEDIA_TOKEN.fullmatch(maintype) and _MEDIA_TOKEN.fullmatch(subtype)) \
            or maintype in ("multipart", "message"):
        return None
    if filename.isascii():
        if not _PLAIN_NAME.fullmatch(filename) or "=?" in filename:
            return None
        param = f'filename="{filename}"'
    else:
        if cid is not None:
            return None  # the Content-ID would be an encoded word
        try:
            param = "filename*=utf-8''" + urllib.parse.quote(filename, safe="")
        except UnicodeEncodeError:
            return None
    if len(param) > _MAX_FIELD:
        return None
    headers = [["Content-Type", f"{maintype}/{subtype}"], ["Content-Transfer-Encoding", "base64"],
               ["Content-Disposition", f"{disposition}; {param}"]]
    if cid is not None:
        headers.append(["Content-ID", cid])
    headers.append(["MIME-Version", "1.0"])
    b2a = binascii.b2a_base64
    payload = b"".join([b2a(data[i:i + _BASE64_CHUNK], newline=False) + b"\r\n"
                        for i in range(0, len(data), _BASE64_CHUNK)])
    return _Part(headers, payload)


def _add(part: _Part, subtype: str, child: _Part) -> None:
    """MIMEPart._add_multipart: make `part` a multipart/<subtype> first if it is not one."""
    if part.subtype() != subtype:
        _make_multipart(part, subtype)
    part.payload.append(child)  # type: ignore[union-attr]


def _make_multipart(part: _Part, subtype: str) -> None:
    """MIMEPart._make_multipart: its Content-* fields and payload move to a first subpart (without
    MIME-Version, which stays); the part becomes multipart/<subtype>."""
    moved = [h for h in part.headers if h[0].lower().startswith("content-")]
    kept = [h for h in part.headers if not h[0].lower().startswith("content-")]
    part.payload = [_Part(moved, part.payload)] if moved else []
    part.headers = [*kept, ["Content-Type", f"multipart/{subtype}"]]


def _render(part: _Part) -> bytes:
    """BytesGenerator.flatten at CRLF: subparts first (so their boundaries are drawn first), then
    this part's boundary, then its header fields."""
    if isinstance(part.payload, list):
        texts = [_render(p) for p in part.payload]
        boundary = _boundary(b"\r\n".join(texts))
        for header in part.headers:
            if header[0].lower() == "content-type":
                header[1] = f'{header[1]}; boundary="{boundary}"'
        b = boundary.encode()
        body = b"--" + b + b"\r\n" + (b"\r\n--" + b + b"\r\n").join(texts) + b"\r\n--" + b + b"--\r\n"
    else:
        body = part.payload
    head = "".join(f"{name}: {value}\r\n" for name, value in part.headers)
    return head.encode() + b"\r\n" + body


def _boundary(text: bytes) -> str:
    """email.generator.Generator._make_boundary: a random token, suffixed until no line of the text
    is the boundary line."""
    boundary = "=" * 15 + f"{random.randrange(sys.maxsize):0{_WIDTH}d}" + "=="
    b, counter = boundary, 0
    while b"--" + b.encode() in text and re.search(b"^--" + re.escape(b.encode()) + b"(--)?$", text, re.MULTILINE):
        b = f"{boundary}.{counter}"
        counter += 1
    return b
