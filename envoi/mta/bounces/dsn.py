"""Delivery Status Notifications (RFC 3464): bytes in, a `Dsn` out. Never raises on bad input.

Reads `multipart/report; report-type=delivery-status` (and the RFC 6533 `global-delivery-status`
variant): the per-message fields (Reporting-MTA, Arrival-Date), one `DsnRecipient` per
per-recipient block (Final-Recipient, Original-Recipient, Action, Status, Diagnostic-Code,
Remote-MTA), and the returned original's Message-ID / To / Return-Path from the
`text/rfc822-headers` or `message/rfc822` part.

Bounces that are not RFC 3464 reports (qmail-style or hand-written texts) get a best-effort
reading: the first "5xx x.y.z" / "x.y.z" status in the text and the address next to it, marked
`heuristic=True` so the caller trusts it only where VERP already names the recipient.

At most `mime.MAX_REPORT_BYTES` of the input are read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message

from envoi.mta.bounces import mime

_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})")
_TEXT_STATUS = re.compile(r"\b([45]\d\d)[ -]([45]\.\d{1,3}\.\d{1,3})\b|(?<![\d.])([45]\.\d{1,3}\.\d{1,3})(?![\d.])")
_TEXT_ADDRESS = re.compile(r"<?([A-Za-z0-9._%+'=-]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63})>?")
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")


@dataclass
class DsnRecipient:
    final_recipient: str = ""  # address, lower-cased, without the "rfc822;" type
    original_recipient: str = ""
    action: str = ""  # failed | delayed | delivered | relayed | expanded | ""
    status: str = ""  # enhanced status code "5.1.1" ("" if missing or malformed)
    diagnostic_code: str = ""  # e.g. "smtp; 550 5.1.1 <x@y>: Recipient address rejected"
    remote_mta: str = ""  # host name, without the "dns;" type
    last_attempt_date: str = ""
    heuristic: bool = False  # read from free text, not from a delivery-status block

    @property
    def permanent(self) -> bool:
        """A permanent failure: Action failed (or missing) with a 5.x.x status."""
        return self.status.startswith("5") and self.action in ("failed", "")

    @property
    def delayed(self) -> bool:
        return self.action == "delayed" or self.status.startswith("4")


@dataclass
class Dsn:
    is_report: bool = False  # a multipart/report with a delivery-status part
    reporting_mta: str = ""
    arrival_date: str = ""
    subject: str = ""
    recipients: list[DsnRecipient] = field(default_factory=list)
    original_message_id: str = ""  # without brackets
    original_to: str = ""
    original_return_path: str = ""  # our VERP address, if the original's headers were returned
    original_envelope_id: str = ""

    @property
    def failures(self) -> list[DsnRecipient]:
        return [r for r in self.recipients if r.permanent]


def _strip_type(value: str) -> str:
    """'dns; mx.example.com' -> 'mx.example.com'."""
    _, semi, rest = value.partition(";")
    return (rest if semi else value).strip()[:255]


def _status(value: str) -> str:
    match = _STATUS.match(value or "")
    return ".".join(match.groups()) if match else ""


def _recipient(block: dict[str, str]) -> DsnRecipient:
    action = (block.get("action") or "").strip().lower().split(" ")[0]
    return DsnRecipient(
        final_recipient=mime.address_of(block.get("final-recipient", "")),
        original_recipient=mime.address_of(block.get("original-recipient", "")),
        action=action if action in ACTIONS else "",
        status=_status(block.get("status", "")),
        diagnostic_code=(block.get("diagnostic-code") or "")[:1000],
        remote_mta=_strip_type(block.get("remote-mta", "")),
        last_attempt_date=(block.get("last-attempt-date") or "")[:100],
    )


def _heuristic(message: Message, parts: list[Message]) -> list[DsnRecipient]:
    text = ""
    for part in parts:
        if mime.content_type(part) in ("text/plain", "text/html") and not part.is_multipart():
            text += mime.part_text(part)[:64 * 1024] + "\n"
            if len(text) > 128 * 1024:
                break
    match = _TEXT_STATUS.search(text)
    if match is None:
        return []
    status = match.group(2) or match.group(3)
    start = max(0, match.start() - 300)
    nearby = _TEXT_ADDRESS.findall(text[start:match.end() + 300])
    address = nearby[0].lower() if nearby else ""
    line_start = text.rfind("\n", 0, match.start()) + 1
    line_end = text.find("\n", match.end())
    diagnostic = text[line_start: line_end if line_end >= 0 else None].strip()[:1000]
    return [DsnRecipient(final_recipient=address, action="failed" if status.startswith("5") else "delayed",
                         status=status, diagnostic_code=diagnostic, heuristic=True)]


def parse(raw: bytes | str | Message) -> Dsn:
    """Parse one inbound bounce. Garbage gives an empty Dsn (no recipients), never an exception."""
    message = raw if isinstance(raw, Message) else mime.parse_message(raw)
    if message is None:
        return Dsn()
    try:
        return _parse(message)
    except Exception:  # a parser bug must not turn into a 451 loop with the remote
        return Dsn()


def _parse(message: Message) -> Dsn:
    dsn = Dsn(subject=mime.header(message, "subject")[:500])
    parts = mime.walk(message)
    status_part = None
    for part in parts:
        if mime.content_type(part) in ("message/delivery-status", "message/global-delivery-status",
                                       "text/delivery-status"):
            status_part = part
            break
    if status_part is not None:
        dsn.is_report = True
        blocks = mime.field_blocks(mime.part_text(status_part))
        per_message = blocks[0] if blocks and not any(
            k in blocks[0] for k in ("final-recipient", "original-recipient", "action")) else {}
        dsn.reporting_mta = _strip_type(per_message.get("reporting-mta", ""))
        dsn.arrival_date = per_message.get("arrival-date", "")[:100]
        dsn.original_envelope_id = per_message.get("original-envelope-id", "")[:200]
        for block in blocks:
            if "final-recipient" in block or "original-recipient" in block or "action" in block:
                dsn.recipients.append(_recipient(block))
    else:
        dsn.recipients = _heuristic(message, parts)
    original = mime.original_message(parts)
    if original is not None:
        dsn.original_message_id = mime.message_id_of(mime.header(original, "message-id"))
        dsn.original_to = mime.header(original, "to")[:1000]
        dsn.original_return_path = mime.address_of(mime.header(original, "return-path"))
    return dsn
