"""Batch sending's %recipient% placeholders: one implementation for the send API and SMTP submission.

Mailgun semantics ("Batch Sending"): `recipient-variables` (over SMTP the X-Mailgun-Recipient-Variables
header) is a JSON object that maps each To address to an object of variables. In that recipient's copy
%recipient% becomes its address and %recipient.KEY% the value of KEY, or nothing when it has no KEY.

A value is rendered the same way on both edges, as JSON shows it: a string as it is; true, false, null;
numbers as JSON writes them; objects and lists as compact JSON (`{"a":1}`), never Python's repr.

In a header a value may not carry a control character (CR or LF would add a header or end the header
block, NUL is refused everywhere): the message is refused and nothing is stored. In a body, newlines
are welcome (over SMTP they become CRLF, as every line of a stored message ends).
"""

from __future__ import annotations

import json
import re

from envoi.mta import jsonvalues
from envoi.mta.errors import InvalidMessage

PLACEHOLDER = re.compile(r"%recipient(?:\.([A-Za-z0-9_\-:]+))?%")
_PLACEHOLDER_BYTES = re.compile(rb"%recipient(?:\.([A-Za-z0-9_\-:]+))?%")
# C0 controls but TAB, and DEL: never in a header value (TAB is folding white space).
HEADER_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NEWLINES = re.compile(r"\r\n|\r|\n")
MAX_LINE = 998  # octets per line, without CRLF (RFC 5322 2.1.1)
# Where a header line may be folded: before white space that follows something else (unfolding, which
# removes the CRLF only, then gives the original back; a line of white space alone is not allowed).
_FOLD_POINT = re.compile(rb"(?<=[^ \t])[ \t]")


def render(value) -> str:
    """A variable's value as text: JSON's spelling for everything that is not a string."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return json.dumps(value)  # true/false/null, numbers (bool before int: json knows)


def load(raw: str, what: str) -> dict[str, dict]:
    """Parse recipient-variables: a JSON object whose every value is an object. InvalidMessage if not."""
    value = jsonvalues.load_object(raw, what, "an object keyed by recipient address")
    for address, variables in value.items():
        if not isinstance(variables, dict):
            raise InvalidMessage(f"{what} is not a valid JSON: the value for {address[:254]!r} must be an object")
    return value


class Substituter:
    """Fills one recipient's copy. address None: the copy for Cc/Bcc only, where placeholders go empty."""

    def __init__(self, address: str | None, variables: dict):
        self.address = address or ""
        self.variables = variables

    def header(self, name: str, text: str) -> str:
        if not text or "%recipient" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self._header_value(name, m.group(1)), text)

    def body(self, text: str) -> str:
        if not text or "%recipient" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self.value(m.group(1)), text)

    def value(self, key: str | None) -> str:
        """The text of %recipient% (key None) or %recipient.KEY%."""
        if key is None:
            return self.address
        return render(self.variables.get(key, ""))

    def _header_value(self, name: str, key: str | None) -> str:
        value = self.value(key)
        if HEADER_UNSAFE.search(value):
            raise InvalidMessage(
                f"recipient-variables: %recipient.{key}% for {self.address} is used in the {name} header and"
                " contains a control character (CR, LF or NUL are not allowed in headers)")
        return value


LIST_UNSUBSCRIBE = "%mailing_list_unsubscribe_url%"


class MemberSubstituter(Substituter):
    """A mailing list member's copy: %recipient% is the member, %recipient.KEY% its vars (and
    %recipient.name% its name), %mailing_list_unsubscribe_url% its own link for this list."""

    def __init__(self, address: str, variables: dict, unsubscribe_url: str):
        super().__init__(address, variables)
        self.unsubscribe_url = unsubscribe_url

    def header(self, name: str, text: str) -> str:
        if text and LIST_UNSUBSCRIBE in text:
            text = text.replace(LIST_UNSUBSCRIBE, self.unsubscribe_url)
        return super().header(name, text)

    def body(self, text: str) -> str:
        if text and LIST_UNSUBSCRIBE in text:
            text = text.replace(LIST_UNSUBSCRIBE, self.unsubscribe_url)
        return super().body(text)


def member_variables(member: dict) -> dict:
    """A member's %recipient.*% values: its vars, and its name unless the vars name one."""
    return {"name": member.get("name") or "", **(member.get("vars") or {})}


class Unchanged(Substituter):
    """No recipient-variables: placeholders stay as written (Mailgun substitutes only in batch sends)."""

    def __init__(self):
        super().__init__(None, {})

    def header(self, name: str, text: str) -> str:
        return text

    def body(self, text: str) -> str:
        return text


def substitute_mime(mime: bytes, address: str, variables: dict) -> bytes:
    """SMTP batch sending: fill one recipient's copy of a caller-built CRLF message, in its raw bytes.

    Placeholders inside base64 or quoted-printable parts are not seen (as with Mailgun, senders keep them
    in 7bit/8bit parts). A header line made longer than 998 octets is folded at white space; one that
    cannot be, or a body line made that long, refuses the message (it would be undeliverable).
    """
    if b"%recipient" not in mime:
        return mime
    sub = Substituter(address, variables)
    end = mime.find(b"\r\n\r\n")
    head, body = (mime, b"") if end < 0 else (mime[: end + 2], mime[end + 2:])
    if b"%recipient" in head:
        head = b"".join(_header_field(sub, field) + b"\r\n" for field in _fields(head))
    if b"%recipient" in body:
        grew = False

        def one(match: re.Match) -> bytes:
            nonlocal grew
            key = match.group(1)
            value = _NEWLINES.sub("\r\n", sub.value(None if key is None else key.decode())).encode()
            grew = grew or len(value) > len(match.group())
            return value

        body = _PLACEHOLDER_BYTES.sub(one, body)
        # PERF: lines are measured only when a value is longer than its placeholder (SMTP's DATA
        # already keeps every line of what came in within the limit).
        if grew and max(map(len, body.split(b"\r\n"))) > MAX_LINE:
            raise InvalidMessage(f"a body line is longer than {MAX_LINE} octets once recipient-variables are"
                                 " filled in; keep placeholders on short lines")
    return head + body


def fill_head(head: bytes, sub: Substituter) -> bytes:
    """substitute_mime's header half: head is a header block ending in CRLF (without the blank line)."""
    if b"%recipient" not in head:
        return head
    return b"".join(_header_field(sub, field) + b"\r\n" for field in _fields(head))


class HeadTemplate:
    """fill_head for one header block filled in for many recipients (the parts of a batch send's head around
    its To line): split into fields once; per recipient only the fields with a placeholder are filled."""

    def __init__(self, head: bytes):
        self.head = head
        self.pieces: list[bytes | tuple[bytes]] = []  # bytes as they are, (field,) to fill (each with its CRLF)
        if b"%recipient" not in head:
            return
        for field in _fields(head):
            colon = field.find(b":")
            if colon < 0 or b"%recipient" not in field[colon:]:
                if self.pieces and isinstance(self.pieces[-1], bytes):
                    self.pieces[-1] += field + b"\r\n"
                else:
                    self.pieces.append(field + b"\r\n")
            else:
                self.pieces.append((field,))

    def fill(self, sub: Substituter) -> bytes:
        """fill_head(head, sub)."""
        if not self.pieces:
            return self.head
        return b"".join(piece if isinstance(piece, bytes) else _header_field(sub, piece[0]) + b"\r\n"
                        for piece in self.pieces)


class BodyTemplate:
    """substitute_mime's body half for one body filled in for many recipients (a batch send): the body
    is split at its placeholders once; each recipient's copy is then a join of the same bytes that
    substitute_mime writes (each distinct placeholder's value rendered once per copy)."""

    def __init__(self, body: bytes):
        self.body = body
        self.parts = _PLACEHOLDER_BYTES.split(body)  # static, key (None: %recipient%), static, ...
        self.lengths = [len(m.group()) for m in _PLACEHOLDER_BYTES.finditer(body)]
        self.statics, self.keys = self.parts[0::2], self.parts[1::2]
        # Each distinct key (in order of first appearance) and the length of its shortest placeholder: a value
        # longer than that makes a line longer.
        self.shortest: dict[bytes | None, int] = {}
        for key, length in zip(self.keys, self.lengths, strict=True):
            self.shortest[key] = min(length, self.shortest.get(key, length))

    def fill(self, sub: Substituter) -> bytes:
        if len(self.parts) == 1:
            return self.body
        # PERF: each key's value once, then the copy in one join (one key, the usual case, is the values'
        # join of the static parts): a loop over every placeholder took ~10 us a copy for ~70 of them.
        values = {key: _NEWLINES.sub("\r\n", sub.value(None if key is None else key.decode())).encode()
                  for key in self.shortest}
        grew = any(len(values[key]) > length for key, length in self.shortest.items())
        if len(values) == 1:
            body = values[self.keys[0]].join(self.statics)
        else:
            out = list(self.parts)
            out[1::2] = [values[key] for key in self.keys]
            body = b"".join(out)
        if grew and max(map(len, body.split(b"\r\n"))) > MAX_LINE:
            raise InvalidMessage(f"a body line is longer than {MAX_LINE} octets once recipient-variables are"
                                 " filled in; keep placeholders on short lines")
        return body


def _fields(head: bytes) -> list[bytes]:
    """Raw header fields, each with its folded continuation lines, without the final CRLF."""
    fields: list[bytes] = []
    for line in head[:-2].split(b"\r\n") if head.endswith(b"\r\n") else head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    return fields


def _header_field(sub: Substituter, field: bytes) -> bytes:
    colon = field.find(b":")
    if colon < 0 or b"%recipient" not in field[colon:]:
        return field  # placeholders are filled in values only: a filled-in name could become Bcc
    name = field[:colon].decode("ascii", "replace").strip()
    value = field[colon + 1:].decode("utf-8", "surrogateescape")  # raw 8-bit header bytes survive
    filled = field[: colon + 1] + sub.header(name, value).encode("utf-8", "surrogateescape")
    lines = filled.split(b"\r\n")
    return b"\r\n".join(fold(line, colon + 2 if i == 0 else 1) if len(line) > MAX_LINE else line
                        for i, line in enumerate(lines))


def fold(line: bytes, start: int) -> bytes:
    """Fold one header line (no CRLF) so no line exceeds 998 octets, inserting CRLF before white space
    only; InvalidMessage when a run without white space is too long to fold."""
    out = []
    while len(line) > MAX_LINE:
        points = [m.start() for m in _FOLD_POINT.finditer(line, start, MAX_LINE + 1)]
        if not points:
            raise InvalidMessage(f"a header line is longer than {MAX_LINE} octets once recipient-variables are"
                                 " filled in and has no white space to fold it at")
        out.append(line[: points[-1]])
        line = line[points[-1]:]
        start = 1
    out.append(line)
    return b"\r\n".join(out)
