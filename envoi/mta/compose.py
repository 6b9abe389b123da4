"""Build RFC 5322 messages from Mailgun's send fields, and read options from raw MIME.

Everything that reaches a header is checked for CR, LF and other control characters first: a
field with one is refused, never folded or stripped, so no header or recipient can be injected.
Recipient-variables are filled in by envoi.mta.substitution, which refuses such values in headers.

Long headers are folded (RFC 5322: no line over 998 octets): at white space, or as RFC 2047 encoded
words when there is none to fold at. Limits refused at accept, so nothing accepted is undeliverable:
a Subject over 998 characters (no reader shows more; Postmark allows 2,000) and any other header
but To/Cc over 32 KB once encoded (Gmail refuses a message with such a header). NUL and lone
surrogates, which Postgres cannot store and no mail may carry, are refused in every field.
"""

from __future__ import annotations

import base64
import binascii
import email.header
import email.policy
import functools
import json
import math
import mimetypes
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import HeaderParser
from email.utils import format_datetime, formataddr, getaddresses, parsedate_to_datetime
from typing import BinaryIO

from email_validator import EmailNotValidError, validate_email

from envoi.infra import ids
from envoi.mta import idn, jsonvalues, mime_body, mime_head, substitution
from envoi.mta.errors import InvalidMessage, InvalidRecipient, MessageTooLarge
from envoi.mta.senders import from_addresses as read_from_addresses

MAX_RECIPIENTS = 1000
MAX_TAGS = 3
MAX_SCHEDULE_AHEAD = 3 * 86400
CONTROL = substitution.HEADER_UNSAFE
# Control characters, and lone surrogates (a \ud800 JSON escape; not encodable, not storable).
_HEADER_REFUSED = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")
HEADER_NAME = re.compile(r"^[!-9;-~]{1,100}$")  # RFC 5322 ftext; a name must leave room on its line
MAX_SUBJECT = 998  # characters
MAX_HEADER_BYTES = 32 * 1024  # one header field once encoded and folded (Gmail's limit per header)
# Headers whose value we own: a caller may not override them through h:.
RESERVED_HEADERS = {"message-id", "date", "mime-version", "content-type", "content-transfer-encoding",
                    "dkim-signature", "from", "to", "cc", "bcc", "subject"}
SMTP_POLICY = email.policy.SMTP.clone(max_line_length=998)
YES = {"yes", "true", "1", "on"}
NO = {"no", "false", "0", "off"}


@dataclass
class Upload:
    """An uploaded file: bytes, or (when large) a file spooled to disk and read only when composing."""

    filename: str | None
    content_type: str
    source: bytes | BinaryIO
    size: int = -1

    def __post_init__(self):
        if self.size < 0:
            self.size = len(self.source) if isinstance(self.source, bytes) else -1

    @property
    def data(self) -> bytes:
        if isinstance(self.source, bytes):
            return self.source
        self.source.seek(0)
        return self.source.read()


@dataclass
class Composed:
    """One stored copy: its envelope recipients and MIME (batch sends make one copy per recipient)."""

    recipients: list[str]
    mime: bytes
    headers: dict
    # A batch send's copy as compose filled it in: (the batch's substitution.BodyTemplate, this recipient's
    # Substituter), so a renderer can do its per-body work once per batch (envoi.mta.tracking); None for
    # any other copy. A renderer that makes a new mime makes a new Composed (without it).
    filled: tuple | None = field(default=None, repr=False, compare=False)


@dataclass
class Draft:
    """A message ready for intake, whichever edge it came from."""

    domain: str
    mail_from: str
    copies: list[Composed]
    message_id: str
    tags: list[str] = field(default_factory=list)
    user_variables: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    attachments: list[dict] = field(default_factory=list)
    method: str = "http"
    deliver_at: float | None = None
    from_addresses: list[str] = field(default_factory=list)  # checked against the sending domain
    # The caller chose the Message-ID (h:Message-Id): unique per domain, which the insert enforces.
    message_id_given: bool = False
    rendered: bool = False  # already rendered once (a resent stored copy): intake skips the renderers
    expanded: bool = False  # a mailing list's copies: the size limit is per copy, not for them all
    # SMTP's X-Mailgun-Template-* request ({"fields", "recipient_variables"}), rendered by intake
    # (envoi.mta.templated); None once rendered, and for the send API (rendered in compose()).
    template: dict | None = None

    @property
    def size(self) -> int:
        return sum(len(c.mime) for c in self.copies)


@dataclass
class ListExpansion:
    """A mailing list named in `to`: its subscribed members (address, name, vars), where replies go, and
    how a member's copy is filled in (%recipient.*%, %mailing_list_unsubscribe_url%)."""

    address: str
    members: list[dict]
    reply_to: str | None
    substituter: Callable[[str, dict], substitution.Substituter]  # (message_id, member)


_MSG_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_MSG_DOT_ATOM = rf"{_MSG_ATOM}(?:\.{_MSG_ATOM})*"
# RFC 5322 3.6.4 msg-id without its angle brackets: dot-atom-text "@" (dot-atom-text / no-fold-literal).
_MSG_ID = re.compile(rf"{_MSG_DOT_ATOM}@(?:{_MSG_DOT_ATOM}|\[[!-Z^-~]*\])")
MAX_MESSAGE_ID = 250  # characters, without the brackets: the header stays on one line


def given_message_id(fields: dict[str, list[str]]) -> str | None:
    """The caller's h:Message-Id (any case of the name), without its angle brackets (Mailgun takes it
    with or without them); None when not given. A value that is not one msg-id is refused."""
    values = next((v for k, v in fields.items() if k.lower() == "h:message-id" and v), None)
    if values is None:
        return None
    value = check_header_value("h:Message-Id", values[-1]).strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    if len(value) > MAX_MESSAGE_ID or _MSG_ID.fullmatch(value) is None:
        raise InvalidMessage("h:Message-Id is not a valid Message-ID: use <left-part@right-part> (RFC 5322),"
                             f" at most {MAX_MESSAGE_ID} characters")
    return value


def check_header_value(name: str, value: str) -> str:
    if (m := _HEADER_REFUSED.search(value)) is not None:
        if m.group() >= "\ud800":
            raise InvalidMessage(f"{name} contains invalid Unicode (a lone surrogate)")
        raise InvalidMessage(f"{name} contains a control character (CR, LF or NUL are not allowed)")
    return value


def parse_addresses(field_name: str, values: list[str]) -> list[tuple[str, str]]:
    """Parse repeated or comma-separated address fields into (display name, address) pairs."""
    pairs: list[tuple[str, str]] = []
    for raw in values:
        check_header_value(field_name, raw)
        if _EVERYDAY_ADDRESS.fullmatch(raw) is not None:
            # PERF: a bare everyday address (the usual `to`, a new one per message: the cache below misses)
            # is what getaddresses gives back as is, ~17 us sooner (a test compares the two).
            pairs.append(("", normalize_address(raw, field_name)))
            continue
        if (everyday := _everyday_list(raw)) is not None:
            pairs += [("", normalize_address(addr, field_name)) for addr in everyday]
            continue
        for name, addr in _getaddresses(raw) if len(raw) <= 1024 else getaddresses([raw]):
            if not addr and not name:
                continue
            pairs.append((name, normalize_address(addr, field_name)))
    return pairs


def _everyday_list(raw: str) -> list[str] | None:
    """The addresses of a comma-separated list of bare everyday addresses (a batch send's `to` of up to
    1,000), each as getaddresses gives it back; None for anything else (names, brackets, an empty item).

    PERF: email's address-list parser walks such a `to` character by character in Python, ~25 us per
    address (12 % of a batch send's accept); a test compares the two on generated lists."""
    if "," not in raw:
        return None
    addresses = [item.strip(" \t") for item in raw.split(",")]
    if all(map(_EVERYDAY_ADDRESS.fullmatch, addresses)):
        return addresses
    return None


@functools.lru_cache(maxsize=4096)  # a sender's From repeats on every message: parsed once
def _getaddresses(raw: str) -> tuple[tuple[str, str], ...]:
    return tuple(getaddresses([raw]))


def normalize_address(addr: str, field_name: str = "to") -> str:
    """The address as stored and compared (the API's fields and SMTP's MAIL/RCPT both come here)."""
    addr = addr.strip()
    if addr.startswith('"'):
        # RFC 5321 4.1.2: "quoted"@x is the mailbox quoted@x; SMTP's path parser already reads it
        # so. Quoted parts that need their quotes (spaces, "..") are still refused, at both edges.
        addr = _QUOTED_LOCAL.sub(r"\1@", addr, count=1)
    try:
        return _normalized(addr)
    except EmailNotValidError as ex:
        raise InvalidRecipient(f"{field_name} parameter is not a valid address. please check documentation") from ex


_QUOTED_LOCAL = re.compile(r'^"([^"\\]*)"@')
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# The everyday address (ASCII dot-atom at LDH labels and an alphabetic TLD) in one regex match:
# email_validator costs ~0.1 ms per address (~6% of the SMTP server's CPU). Everything else (quoted
# or UTF-8 local parts, IDNA, hyphen pairs, long parts) still goes to email_validator; a test checks
# on many generated addresses that what the fast path accepts, email_validator accepts identically.
_EVERYDAY_ADDRESS = re.compile(rf"({_ATEXT}(?:\.{_ATEXT})*)@((?:{_LABEL}\.)+[A-Za-z]{{2,63}})")


@functools.lru_cache(maxsize=16384)  # senders repeat on every message, recipients are checked twice
def _normalized(addr: str) -> str:
    m = _EVERYDAY_ADDRESS.fullmatch(addr)
    if m is not None and len(m[1]) <= 64 and len(addr) <= 254 and "--" not in m[2]:
        return f"{m[1]}@{m[2].lower()}"
    # .test is allowed: dev stacks and tests address mail to it (RFC 6761 reserves it for that).
    result = validate_email(addr, check_deliverability=False, allow_smtputf8=True,
                            globally_deliverable=False, test_environment=True)
    if "." not in result.domain:
        raise EmailNotValidError("domain has no dot")
    local, _, domain = result.normalized.rpartition("@")
    return f"{local}@{domain.lower()}"


def flag(value: str | None, name: str) -> bool | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v in YES:
        return True
    if v in NO:
        return False
    if name == "tracking-clicks" and v == "htmlonly":
        return True
    raise InvalidMessage(f"o:{name} must be yes or no")


def parse_delivery_time(value: str) -> float:
    value = value.strip()
    try:
        when = float(value)
        if not math.isfinite(when):
            raise ValueError(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError) as ex:
            raise InvalidMessage(f"o:deliverytime '{value}' is not a valid RFC 2822 date") from ex
    if when > time.time() + MAX_SCHEDULE_AHEAD:
        raise InvalidMessage("o:deliverytime can't be more than 3 days in the future")
    return when


#: The o: options Envoi applies.
OPTIONS_USED = frozenset({"tag", "testmode", "tracking", "tracking-clicks", "tracking-opens", "require-tls",
                          "skip-verification", "dkim", "sending-ip", "sending-ip-pool", "deliverytime"})
#: Documented by Mailgun and accepted, but without effect in Envoi (README "Sending options").
OPTIONS_IGNORED = frozenset({"archive-to", "deliver-within", "deliverytime-optimize-period", "time-zone-localize",
                             "suppress-headers", "tracking-pixel-location-top", "secondary-dkim",
                             "secondary-dkim-public"})
TEMPLATE_OPTIONS = frozenset({"version", "text", "variables"})  # t:


def check_option_names(fields: dict[str, list[str]]) -> None:
    """A misspelt option must not be dropped silently: an o: or t: name Mailgun does not document is a 400."""
    for key in fields:
        prefix, _, name = key.partition(":")
        if prefix == "o" and name not in OPTIONS_USED | OPTIONS_IGNORED or \
                prefix == "t" and name not in TEMPLATE_OPTIONS:
            raise InvalidMessage(f"'{key[:100]}' is not a valid option; see the documentation for the"
                                 f" {prefix}: options")


def read_options(fields: dict[str, list[str]]) -> tuple[list[str], dict, dict, float | None]:
    """The o:, v: and tag fields shared by /messages and /messages.mime (an unknown o:/t: name is refused)."""
    if not fields:  # a message given as MIME with no options (most SMTP messages)
        return [], {}, {}, None
    check_option_names(fields)
    tags = []
    for tag in fields.get("o:tag", []):
        check_header_value("o:tag", tag)
        if not tag.isascii() or len(tag) > 128:
            raise InvalidMessage("o:tag must be ASCII and at most 128 characters")
        if tag.lower() not in (t.lower() for t in tags):
            tags.append(tag)
    tags = tags[:MAX_TAGS]  # Mailgun drops tags past the third

    def last(name: str) -> str | None:
        values = fields.get(name)
        return values[-1] if values else None

    options: dict = {}
    for name in ("testmode", "tracking", "tracking-clicks", "tracking-opens", "require-tls",
                 "skip-verification", "dkim"):
        value = flag(last(f"o:{name}"), name)
        if value is not None:
            options[name.replace("-", "_")] = value
    if (v := last("o:tracking-clicks")) and v.strip().lower() == "htmlonly":
        options["tracking_clicks"] = "htmlonly"
    for name in ("sending-ip", "sending-ip-pool"):
        if v := last(f"o:{name}"):
            options[name.replace("-", "_")] = check_header_value(f"o:{name}", v.strip())
    deliver_at = parse_delivery_time(v) if (v := last("o:deliverytime")) else None

    variables: dict = {}
    for key, values in fields.items():
        if key.startswith("v:") and values:
            name = key[2:]
            check_header_value(key, name)
            raw = jsonvalues.check_text(values[-1], key)
            try:
                variables[name] = jsonvalues.loads(raw, key) if raw[:1] in "{[" else raw
            except ValueError:
                variables[name] = raw  # not JSON: kept as the string it is
    return tags, variables, options, deliver_at


def compose(
    domain: str,
    fields: dict[str, list[str]],
    attachments: list[Upload],
    inlines: list[Upload],
    max_bytes: int | None = None,
    lists: Callable[[list[str]], dict[str, ListExpansion]] | None = None,
    template=None,
) -> Draft:
    """Build the message(s) for POST /v3/{domain}/messages (refused unbuilt if they must exceed max_bytes).

    lists: which `to` addresses are mailing lists, with their members (envoi.mta.list_expansion); each
    subscribed member gets its own copy, To showing the list, placeholders filled from the member.
    template: a stored template to render per copy (envoi.mta.templated.SendTemplate: its
    bodies(substituter) gives the copy's text, or None for the `text` field's, and its html)."""
    froms = parse_addresses("from", fields.get("from", []))
    if not fields.get("from"):
        raise InvalidMessage("from parameter is missing")
    if not froms:
        raise InvalidRecipient("from parameter is not a valid address. please check documentation")
    to = parse_addresses("to", fields.get("to", []))
    cc = parse_addresses("cc", fields.get("cc", []))
    bcc = parse_addresses("bcc", fields.get("bcc", []))
    if not fields.get("to"):
        raise InvalidMessage("to parameter is missing")
    if not to:
        raise InvalidRecipient("to parameter is not a valid address. please check documentation")
    text, html, amp = (fields.get(k, [None])[-1] for k in ("text", "html", "amp-html"))
    if not (text or html or amp or template):
        raise InvalidMessage("Need at least one of 'text' or 'html' parameters specified")
    for name, body_text in (("text", text), ("html", html), ("amp-html", amp)):
        if body_text:
            jsonvalues.check_text(body_text, name)
    subject = _check_subject(check_header_value("subject", fields.get("subject", [""])[-1]))
    envelope = _unique([addr for _, addr in to + cc + bcc])
    if len(envelope) > MAX_RECIPIENTS:
        raise InvalidMessage(f"Too many recipients, max is {MAX_RECIPIENTS}")
    if max_bytes is not None:
        check_size(fields, len(to), attachments, inlines, max_bytes)

    extra_headers = []
    for key, values in fields.items():
        if key.startswith("h:") and values:
            name = key[2:]
            if not HEADER_NAME.match(name) or not name.isascii():
                raise InvalidMessage(f"header name '{name[:100]}' is not valid")
            if name.lower() in RESERVED_HEADERS:
                continue  # these are built from their own fields
            extra_headers.append((name, check_header_value(key, values[-1])))

    tags, variables, options, deliver_at = read_options(fields)
    recipient_variables = _recipient_variables(fields)
    expansions = lists([addr for _, addr in to]) if lists is not None else {}
    if expansions:
        _check_expanded_size(fields, attachments, inlines, sum(len(e.members) for e in expansions.values()))
    given_id = given_message_id(fields)
    message_id = given_id or ids.message_id(domain)
    kept_attachments = [a for a in attachments if a.filename]  # Mailgun drops unnamed attachments
    for upload in kept_attachments + inlines:
        check_header_value("attachment filename", upload.filename or "")
    attachment_types = [_content_type(a) for a in kept_attachments]  # for every copy and the draft: typed once

    def build(to_pairs: list[tuple[str, str]], sub: substitution.Substituter, reply_to: str | None = None,
              member: bool = False) -> bytes:
        # PERF: the header block is written directly (values were checked above); building it through
        # EmailMessage re-parses every value with the header registry, which was most of compose's time.
        head = [
            _address_header("From", froms),
            _address_header("To", to_pairs),
        ]
        if cc and recipient_variables is None:
            head.append(_address_header("Cc", cc))
        head.append(_header("Subject", _check_subject(sub.header("Subject", subject))))
        head.append(_header("Date", _date_now()))
        head.append(_header("Message-ID", f"<{message_id}>"))
        for name, value in extra_headers:
            head.append(_header(name, sub.header(name, value)))
        if reply_to and not any(name.lower() == "reply-to" for name, _ in extra_headers):
            head.append(_header("Reply-To", reply_to))  # a list's reply_preference "list"
        if member and not any(name.lower() == "list-unsubscribe" for name, _ in extra_headers):
            # A list member's copy: its own one-click unsubscribe from the list (RFC 2369, RFC 8058).
            head.append(_header("List-Unsubscribe", sub.header("List-Unsubscribe", LIST_UNSUBSCRIBE_HEADER)))
            head.append(_header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
        if tags:
            head.append(_header("X-Mailgun-Tag", ", ".join(tags)))
        if variables:
            head.append(_header("X-Mailgun-Variables", json.dumps(variables)))
        copy_text, copy_html = sub.body(text) if text else None, sub.body(html) if html else None
        if template is not None:
            rendered_text, copy_html = template.bodies(sub)
            copy_text = rendered_text if rendered_text is not None else copy_text
        # The filename doubles as the Content-ID, as in Mailgun: <img src="cid:logo.png">.
        inline_parts = [(*_content_type(u), u.filename or ids.token(6), u.data) for u in inlines]
        attached = [(*t, u.filename, u.data) for t, u in zip(attachment_types, kept_attachments, strict=True)]
        return b"".join(head) + body_bytes(copy_text, copy_html, sub.body(amp) if amp else None, inline_parts, attached)

    headers = {
        "from": ", ".join(_format(n, a) for n, a in froms),
        "to": ", ".join(_format(n, a) for n, a in to),
        "subject": subject,
        "message-id": message_id,
    }
    copies = []
    for name, addr in to:
        if (expansion := expansions.get(addr)) is not None:  # a mailing list: one copy per subscribed member
            # PERF: built once with its placeholders, then filled in per member in its raw bytes (as SMTP
            # batch sending is), where that gives the very bytes building each copy would; else built.
            prebuilt = build([(name, addr)], substitution.Unchanged(), expansion.reply_to, member=True)
            theirs = any(name.lower() == "list-unsubscribe" for name, _ in extra_headers)
            placeholders = _placeholder_count(fields, extra_headers) + (0 if theirs else 1)  # + List-Unsubscribe
            # (A stored template renders each member's copy from its own values: built, never filled.)
            fill = (template is None and placeholders == _placeholder_count_raw(prebuilt)
                    and b"quoted-printable" not in prebuilt.lower())
            for member in expansion.members:
                sub = expansion.substituter(message_id, member)
                mime = _fill_raw(prebuilt, sub) if fill else None
                if mime is None:
                    mime = build([(name, addr)], sub, expansion.reply_to, member=True)
                copies.append(Composed([member["address"]], mime, dict(headers, to=_format(name, addr))))
    plain_to = [(name, addr) for name, addr in to if addr not in expansions]
    if recipient_variables is None:
        rest = [a for a in envelope if a not in expansions]
        if rest:
            copies.append(Composed(rest, build(to, substitution.Unchanged()), headers))
    else:
        # Batch send: each To recipient gets its own copy showing only itself (Mailgun semantics).
        # PERF: as for list members, built once with its placeholders and filled in per recipient in its
        # raw bytes (its own To line swapped in) where that gives the very bytes building gives; else built.
        batch = _BatchTemplate.make(build, froms, plain_to, fields, extra_headers) if template is None else None
        for name, addr in plain_to:
            rv = recipient_variables.get(addr, {})
            mime = batch.fill(name, addr, rv, subject) if batch is not None else None
            filled = None if mime is None else (batch.body, substitution.Substituter(addr, rv))
            if mime is None:
                mime = build([(name, addr)], substitution.Substituter(addr, rv))
            copies.append(Composed([addr], mime, dict(headers, to=_format(name, addr)), filled))
        extras = _unique([a for _, a in cc + bcc if a not in {x for _, x in to}])
        if extras:
            copies.append(Composed(extras, build(to, substitution.Substituter(None, {})), headers))
    if not copies:
        raise InvalidMessage("the mailing list has no subscribed members: nothing to send")

    return Draft(
        domain=domain,
        mail_from=froms[0][1],
        copies=copies,
        message_id=message_id,
        tags=tags,
        user_variables=variables,
        options=options,
        # As the message's parts say (the type written into each, not the upload's raw header).
        attachments=[{"filename": a.filename, "content-type": "/".join(t), "size": a.size}
                     for t, a in zip(attachment_types, kept_attachments, strict=True)],
        deliver_at=deliver_at,
        from_addresses=[addr for _, addr in froms],
        expanded=bool(expansions),
        message_id_given=given_id is not None,
    )


_PLACEHOLDER = re.compile(r"%recipient[^%\s]{0,200}%")
#: All of a mailing list send's copies together, in bytes: what one accept may hold in memory at once.
MAX_EXPANDED_BYTES = 512 * 1024 * 1024


LIST_UNSUBSCRIBE_HEADER = f"<{substitution.LIST_UNSUBSCRIBE}>"
_ANY_PLACEHOLDER = re.compile(r"%recipient(?:\.[A-Za-z0-9_\-:]+)?%|%mailing_list_unsubscribe_url%")
_ANY_PLACEHOLDER_BYTES = re.compile(rb"%recipient(?:\.[A-Za-z0-9_\-:]+)?%|%mailing_list_unsubscribe_url%")


def _placeholder_count(fields: dict[str, list[str]], extra_headers: list[tuple[str, str]]) -> int:
    texts = [values[-1] for name in ("subject", "text", "html", "amp-html") if (values := fields.get(name))]
    return sum(len(_ANY_PLACEHOLDER.findall(t)) for t in texts + [v for _, v in extra_headers])


def _placeholder_count_raw(mime: bytes) -> int:
    return len(_ANY_PLACEHOLDER_BYTES.findall(mime))


def _fill_raw(template: bytes, sub: substitution.MemberSubstituter) -> bytes | None:
    """A member's copy from the template's raw bytes, or None where only building it is right: a value
    that is not ASCII (an encoded word in a header, an 8bit body), or a line that would grow too long.
    Every placeholder of the template is visible in its bytes (none inside an encoded word, base64 or
    quoted-printable), which the caller checked."""
    if not (sub.address.isascii() and all(substitution.render(v).isascii() for v in sub.variables.values())):
        return None
    filled = template.replace(substitution.LIST_UNSUBSCRIBE.encode(), sub.unsubscribe_url.encode())
    try:
        filled = substitution.substitute_mime(filled, sub.address, sub.variables)
    except InvalidMessage:
        return None  # building says why (a control character in a header) or folds what it can
    if len(filled) > len(template) and max(map(len, filled.split(b"\r\n"))) > substitution.MAX_LINE:
        return None
    if filled.count(b"\r\n--") != template.count(b"\r\n--"):
        return None  # a value that could read as a MIME boundary line: building picks a boundary it avoids
    return filled


@dataclass
class _BatchTemplate:
    """A batch send's copy built once with its placeholders: `before` + the first recipient's To line +
    `after` is its header block, which each recipient's own To line goes into before its placeholders
    are filled; `body` (from the blank line on) is split at its placeholders once."""

    before: substitution.HeadTemplate
    after: substitution.HeadTemplate
    body: substitution.BodyTemplate
    body_dashes: int  # b"\r\n--" in the body: a value must not add a line that reads as a boundary

    @classmethod
    def make(cls, build, froms, plain_to, fields, extra_headers) -> _BatchTemplate | None:
        if len(plain_to) < 2:
            return None
        mime = build(plain_to[:1], substitution.Unchanged())
        to_line = _address_header("To", plain_to[:1])
        at = len(_address_header("From", froms))
        # Every placeholder must be visible in the raw bytes (none in an encoded word, base64 or
        # quoted-printable, none in the To line), as _fill_raw requires.
        if (mime[at:at + len(to_line)] != to_line or b"quoted-printable" in mime.lower()
                or _placeholder_count(fields, extra_headers) != _placeholder_count_raw(mime)):
            return None
        end = mime.find(b"\r\n\r\n") + 2  # the header block's end (its last CRLF); the body is the rest
        body = mime[end:]
        return cls(substitution.HeadTemplate(mime[:at]), substitution.HeadTemplate(mime[at + len(to_line):end]),
                   substitution.BodyTemplate(body), body.count(b"\r\n--"))

    def fill(self, name: str, addr: str, variables: dict, subject: str | None) -> bytes | None:
        """This recipient's copy, or None where only building it is right (as _fill_raw): the bytes
        substitution.substitute_mime gives for the whole copy (its two halves, one split once)."""
        if not (addr.isascii() and all(substitution.render(v).isascii() for v in variables.values())):
            return None
        to_line = _address_header("To", [(name, addr)])
        if b"%" in to_line:
            return None  # building never fills placeholders in the To line
        sub = substitution.Substituter(addr, variables)
        if subject and "%recipient" in subject:  # building checks the filled subject's length
            _check_subject(sub.header("Subject", subject))
        head = self.before.head + to_line + self.after.head
        try:
            # PERF: fill_head(head) field by field, the fields around the To line split once (it has no
            # placeholder: checked above).
            filled_head = self.before.fill(sub) + to_line + self.after.fill(sub)
            filled_body = self.body.fill(sub)
        except InvalidMessage:
            return None  # building says why (a control character in a header) or folds what it can
        filled = filled_head + filled_body
        if len(filled) > len(head) + len(self.body.body) and max(map(len, filled.split(b"\r\n"))) > substitution.MAX_LINE:
            return None
        # (No b"\r\n--" spans the halves: the head ends, and the body starts, with CRLF.)
        if filled.count(b"\r\n--") != head.count(b"\r\n--") + self.body_dashes:
            return None  # a value that could read as a MIME boundary line: building picks a boundary it avoids
        return filled


def _check_expanded_size(fields: dict[str, list[str]], attachments: list[Upload], inlines: list[Upload],
                         members: int) -> None:
    """Refuse, before building a copy per member, a list send whose copies cannot fit in memory."""
    body = sum(len(values[-1]) for name in ("text", "html", "amp-html") if (values := fields.get(name)))
    body += sum(4 * -(-max(u.size, 0) // 3) for u in [a for a in attachments if a.filename] + inlines)
    if body * members > MAX_EXPANDED_BYTES:
        raise MessageTooLarge(f"the message times the list's {members} members is at least {body * members} bytes,"
                              f" over the limit of {MAX_EXPANDED_BYTES} bytes for one send")


def check_size(fields: dict[str, list[str]], to_count: int, attachments: list[Upload], inlines: list[Upload],
               max_bytes: int) -> None:
    """Refuse, before building anything, a draft that cannot fit in max_bytes: the copies' sizes are
    estimated from below (bodies with their placeholders left out, uploads base64-encoded), so a
    message that would fit is never refused here; intake checks the exact size afterwards."""
    body = 0
    for name in ("text", "html", "amp-html"):
        if values := fields.get(name):
            text = values[-1]
            body += len(text) - sum(len(m) for m in _PLACEHOLDER.findall(text)) if "%recipient" in text else len(text)
    uploads = [a for a in attachments if a.filename] + inlines
    body += sum(4 * -(-max(u.size, 0) // 3) for u in uploads)
    copies = to_count if fields.get("recipient-variables") else 1  # a batch send makes one copy per To
    if body * copies > max_bytes:
        raise MessageTooLarge(f"message size at least {body * copies} bytes exceeds the limit of {max_bytes} bytes")


def parse_head(mime: bytes, utf8: bool = False) -> Message:
    """The header block of a CRLF message, parsed (compat32: the raw field values).

    utf8: read UTF-8 in header fields (RFC 6532, sent under SMTPUTF8) as text, as SMTP does; otherwise
    non-ASCII bytes are the parser's undecodable escapes. Read by envoi.mta.mime_head where it gives
    the parser's very Message, else by email's HeaderParser."""
    head_end = mime.find(b"\r\n\r\n")
    if head_end < 0:
        raise InvalidMessage("message has no header/body separator")
    head = mime[: head_end + 2]
    encoding = "utf-8" if utf8 else "ascii"
    if FAST_HEAD:
        try:
            parsed = mime_head.parse(head.decode(encoding))
        except UnicodeDecodeError:  # undecodable bytes: the parser's escapes and Header values, below
            parsed = None
        if parsed is not None:
            return parsed
    try:  # BytesHeaderParser is HeaderParser on the bytes decoded so
        return HeaderParser(policy=email.policy.compat32).parsestr(head.decode(encoding, "surrogateescape") + "\r\n")
    except UnicodeError as ex:  # a Content-Type of UTF-8 and undecodable bytes mixed: refused, not a server error
        raise InvalidMessage("the message header has bytes that are not text") from ex


#: False makes parse_head() use only the email package (the equality tests compare both readers).
FAST_HEAD = True


def from_mime(domain: str, mime: bytes, recipients: list[str], fields: dict[str, list[str]], method: str,
              head: Message | None = None, crlf: bool = False) -> Draft:
    """Prepare a caller-built MIME message (messages.mime and SMTP): add Message-ID/Date if absent.

    head: parse_head(mime) when the caller already has it (SMTP reads From from it first).
    crlf: the caller has refused any line end but CRLF (SMTP), so there is nothing to normalise."""
    if not crlf:
        mime = _crlf(mime)
    parsed = head if head is not None else parse_head(mime)
    if not len(parsed):
        raise InvalidMessage("message has no headers")
    from_addresses = read_from_addresses(parsed)
    first = _first_values(parsed, _READ_HEADERS)
    prepend = []
    message_id = first.get("message-id") or ""
    if not isinstance(message_id, str):  # a Header: bytes that are not text (compat32 makes one of them)
        raise InvalidMessage("the Message-ID header is not text: it has bytes that are not ASCII (or UTF-8 over"
                             " SMTPUTF8)")
    message_id = message_id.strip().strip("<>")
    if not message_id:
        message_id = ids.message_id(domain)
        prepend.append(f"Message-ID: <{message_id}>\r\n".encode())
    if not first.get("date"):
        prepend.append(f"Date: {_date_now()}\r\n".encode())
    mime = b"".join(prepend) + mime
    envelope = _unique([normalize_address(r) for r in recipients])
    if not envelope:
        raise InvalidMessage("to parameter is missing")
    if len(envelope) > MAX_RECIPIENTS:
        raise InvalidMessage(f"Too many recipients, max is {MAX_RECIPIENTS}")
    from_header = _decode(first.get("from", ""))
    senders = _getaddresses(from_header) if len(from_header) <= 1024 else getaddresses([from_header])
    mail_from = senders[0][1] if senders and senders[0][1] else f"postmaster@{domain}"
    headers = {"from": from_header, "to": _decode(first.get("to", "")),
               "subject": _decode(first.get("subject", "")), "message-id": message_id}
    for key, value in headers.items():
        # Metadata for events only (the message itself is the caller's): what Postgres cannot store
        # (an encoded NUL, a UTF-7 surrogate) is replaced rather than failing the accept.
        headers[key] = jsonvalues.UNSTORABLE.sub("\ufffd", value)
    tags, variables, options, deliver_at = read_options(fields)
    return Draft(domain=domain, mail_from=mail_from, copies=[Composed(envelope, mime, headers)],
                 message_id=message_id, tags=tags, user_variables=variables, options=options,
                 method=method, deliver_at=deliver_at, from_addresses=from_addresses,
                 attachments=mime_attachments(mime, parsed))


_READ_HEADERS = frozenset({"message-id", "date", "from", "to", "subject"})


def _first_values(head: Message, names: frozenset[str]) -> dict:
    """head.get(name) for each of names (lower case) that head has, in one pass over its fields
    (PERF: get() is a pass with a lower() per field, each time)."""
    found: dict = {}
    for name, value in head.raw_items():
        key = name.lower()
        if key in names and key not in found:
            found[key] = head.policy.header_fetch_parse(name, value)
    return found


MAX_PART_HEAD = 16 * 1024
_UNFOLD = re.compile(rb"\r\n[ \t]+")
_PART_HEADERS = (b"content-type", b"content-disposition", b"content-transfer-encoding")


def mime_attachments(mime: bytes, head: Message) -> list[dict]:
    """Mailgun's message.attachments of a caller-built (CRLF) message: each part with Content-Disposition
    attachment, as {"filename", "content-type", "size" (decoded bytes)}.

    PERF: this is on the SMTP hot path, so not email.parser over the whole message (a parse of every line
    of every attachment): a message that is not multipart costs its Content-Type (~1 µs, read before
    the two byte searches of the whole message, ~7 µs for 5 KB), one that never says "attachment" those
    searches; otherwise only the lines starting with "--" are looked at (memchr-speed finds: base64 has
    no "-") and only the parts' three MIME headers are read; sizes are counted from the encoded bytes."""
    if head.get_content_maintype() != "multipart":
        return []
    if b"ttachment" not in mime and b"TTACHMENT" not in mime:
        return []
    if not (boundary := head.get_param("boundary")):
        return []
    boundaries = {str(boundary).encode("ascii", "replace")}
    found = []
    pos = mime.find(b"\r\n\r\n")
    while (pos := mime.find(b"\r\n--", pos)) >= 0:
        line_end = mime.find(b"\r\n", pos + 4, pos + 4 + 202)
        line = mime[pos + 4:line_end].rstrip(b" \t") if line_end > 0 else b""
        pos += 4
        if line not in boundaries:
            continue  # a closing "--b--" line, or text that only looks like a boundary
        head_end = mime.find(b"\r\n\r\n", line_end, line_end + MAX_PART_HEAD)
        if head_end < 0:
            continue
        part = _part_headers(mime[line_end + 2:head_end + 2])
        if part.get_content_maintype() == "multipart" and (inner := part.get_param("boundary")):
            boundaries.add(str(inner).encode("ascii", "replace"))
            continue
        if part.get_content_disposition() != "attachment":
            continue
        start = head_end + 4
        end = mime.find(b"\r\n--" + line, start)
        end = len(mime) if end < 0 else end
        found.append({"filename": _decode(part.get_filename() or "") or None,
                      "content-type": part.get_content_type(), "size": _decoded_size(mime, start, end, part)})
        pos = end
    return found


def _part_headers(block: bytes) -> Message:
    """A part's Content-Type, -Disposition and -Transfer-Encoding as a (compat32) Message, read without
    the parser (its cost per part was most of this module's time for small messages)."""
    part = Message()
    for line in _UNFOLD.sub(b" ", block).split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() in _PART_HEADERS:
            part[name.strip().decode("ascii", "replace")] = value.strip().decode("utf-8", "replace")
    return part


def _decoded_size(mime: bytes, start: int, end: int, part: Message) -> int:
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding == "base64":
        chars = (end - start) - 2 * mime.count(b"\n", start, end)  # CRLF throughout (_crlf); one byte counts fastest
        tail = mime[max(start, end - 8):end].rstrip()
        return max(0, chars * 3 // 4 - (len(tail) - len(tail.rstrip(b"="))))
    if encoding == "quoted-printable":
        return len(binascii.a2b_qp(mime[start:end]))
    return end - start


def _crlf(data: bytes) -> bytes:
    """Normalise line endings to CRLF (bare LF/CR never leave this system)."""
    if b"\r" not in data:
        return data.replace(b"\n", b"\r\n")
    crlf = data.count(b"\r\n")
    if data.count(b"\r") == crlf and data.count(b"\n") == crlf:
        return data  # already CRLF throughout (the usual case): counting is far cheaper than sub
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def _decode(value) -> str:
    if not value:
        return ""
    value = str(value)
    if "=?" not in value:  # no encoded words: decode_header would hand it back as is
        return value
    return str(email.header.make_header(email.header.decode_header(value)))


def _header(name: str, value: str) -> bytes:
    """One header field, never a line over 998 octets: ASCII as is, folded at white space past that;
    RFC 2047 encoded words (which may be split anywhere) when not ASCII or when it cannot be folded."""
    if _HEADER_REFUSED.search(value):  # every caller checked already; this writer must never add a line
        check_header_value(name, value)
    if value.isascii() and len(name) + len(value) < 996:
        return f"{name}: {value}\r\n".encode()
    field = None
    if value.isascii():
        try:
            field = substitution.fold(f"{name}: {value}".encode(), len(name) + 2)
        except InvalidMessage:
            field = None  # a run too long to fold at white space: encoded words below
    if field is None:
        field = f"{name}: {_encoded_words(value)}".encode()
    if len(field) > MAX_HEADER_BYTES and name not in ("To", "Cc"):
        raise InvalidMessage(f"the {name} header is too long ({len(field)} octets encoded; at most {MAX_HEADER_BYTES})")
    return field + b"\r\n"


def _encoded_words(value: str) -> str:
    """RFC 2047 B encoded words of at most 72 characters, one per line, each whole characters.

    Not email.header.Header: it splits on what str.splitlines() calls a line break and so drops
    U+0085 and U+2028 from values."""
    data = value.encode()
    words = []
    start = 0
    while start < len(data):
        end = min(start + 45, len(data))  # 45 octets: 60 base64 characters
        while start < end < len(data) and 0x80 <= data[end] < 0xC0:  # not inside a UTF-8 sequence
            end -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(data[start:end]).decode()}?=")
        start = end
    return "\r\n ".join(words)


def _check_subject(subject: str) -> str:
    if len(subject) > MAX_SUBJECT:
        raise InvalidMessage(f"subject is too long ({len(subject)} characters; at most {MAX_SUBJECT})")
    return subject


_MIME_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,127}")


def _content_type(upload: Upload) -> tuple[str, str]:
    """(maintype, subtype) of the upload's declared type without its parameters; a form part that
    declared none (or one that could not be a header value) is typed by its file name's extension, as
    Mailgun does, else application/octet-stream."""
    value = (upload.content_type or "").split(";", 1)[0].strip().lower()
    maintype, _, subtype = value.partition("/")
    if not (_MIME_TOKEN.fullmatch(maintype) and _MIME_TOKEN.fullmatch(subtype)):
        guessed = mimetypes.guess_type(upload.filename or "", strict=False)[0] if upload.filename else None
        maintype, _, subtype = (guessed or "application/octet-stream").partition("/")
    return maintype, subtype


def _address_list(pairs: list[tuple[str, str]]) -> str:
    """Addresses for a header; non-ASCII display names become encoded words, not the address."""
    return ", ".join(_one_address(name, addr) for name, addr in pairs)


def _address_header(name: str, pairs: list[tuple[str, str]]) -> bytes:
    """From/To/Cc. An address with UTF-8 in it is written as it is (RFC 6532; the relay then asks
    for SMTPUTF8): an encoded word may stand for a display name, never for an address."""
    value = _address_list(pairs)
    if value.isascii():
        return _header(name, value)
    return (f"{name}: " + ",\r\n ".join(_one_address(n, addr) for n, addr in pairs) + "\r\n").encode()


@functools.lru_cache(maxsize=4096)  # the sender's From on every message: written once
def _one_address(name: str, addr: str) -> str:
    if not addr.isascii():
        # Only the domain international: A-labels keep the header ASCII (no SMTPUTF8 needed to send it).
        wire, utf8_local = idn.wire_address(addr)
        addr = addr if utf8_local else wire
    if not name:
        return addr
    if addr.isascii():
        return formataddr((name, addr), charset="utf-8")
    # formataddr refuses a UTF-8 address: the name is quoted or encoded by it all the same.
    return formataddr((name, "a@b"), charset="utf-8")[: -len("<a@b>")] + f"<{addr}>"


@functools.lru_cache(maxsize=4096)  # the sender's From on every message: the header registry's str once
def _format(name: str, addr: str) -> str:
    if not name:
        return addr
    local, _, domain = addr.rpartition("@")
    return str(Address(display_name=name, username=local, domain=domain))


def _unique(items: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def _date_now() -> str:
    """The Date header's value (RFC 5322, to the second). PERF: formatted once a second, not per message
    (email.utils.format_datetime, ~8 us)."""
    return _date_text(int(time.time()))


@functools.lru_cache(maxsize=2)
def _date_text(second: int) -> str:
    return format_datetime(datetime.fromtimestamp(second, UTC))


def body_bytes(text: str | None, html: str | None, amp: str | None, inlines: list[tuple[str, str, str, bytes]],
               attachments: list[tuple[str, str, str, bytes]]) -> bytes:
    """The MIME body (its header fields, a blank line, the parts) of a composed copy: written directly
    (envoi.mta.mime_body) where that gives the email package's very bytes, else by the email package.

    inlines, attachments: (maintype, subtype, file name, data)."""
    if FAST_BODY and (written := mime_body.build(text, html, amp, inlines, attachments)) is not None:
        return written
    return email_body(text, html, amp, inlines, attachments)


#: False makes body_bytes() use only the email package (the equality tests compare both writers).
FAST_BODY = True


def email_body(text: str | None, html: str | None, amp: str | None, inlines: list[tuple[str, str, str, bytes]],
               attachments: list[tuple[str, str, str, bytes]]) -> bytes:
    """body_bytes() by the email package: every shape, every value."""
    msg = EmailMessage(policy=SMTP_POLICY)
    if text is not None:
        msg.set_content(text)
        if amp is not None:
            msg.add_alternative(amp, subtype="x-amp-html")
        if html is not None:
            msg.add_alternative(html, subtype="html")
    elif amp is not None:
        msg.set_content(amp, subtype="x-amp-html")
        if html is not None:
            msg.add_alternative(html, subtype="html")
    else:
        msg.set_content(html, subtype="html")
    if inlines:
        html_part = msg.get_body(("html",)) if html is not None else None
        target = html_part if html_part is not None else msg
        for maintype, subtype, name, data in inlines:
            target.add_related(data, maintype=maintype, subtype=subtype, cid=f"<{name}>", filename=name,
                               disposition="inline")
    for maintype, subtype, name, data in attachments:
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes(policy=SMTP_POLICY)


def _recipient_variables(fields: dict[str, list[str]]) -> dict | None:
    raw = fields.get("recipient-variables")
    if not raw:
        return None
    return substitution.load(raw[-1], "'recipient-variables' parameter")
