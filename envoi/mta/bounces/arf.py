"""Abuse Reporting Format (RFC 5965) feedback reports: bytes in, an `Arf` out. Never raises.

Reads `multipart/report; report-type=feedback-report`: the machine-readable part
(Feedback-Type, User-Agent, Version, Original-Mail-From, Original-Rcpt-To, Arrival-Date,
Source-IP, Reported-Domain) and the embedded original message or its headers (Message-ID, To,
From, Subject, Return-Path: our VERP address when the FBL kept it).

FBLs redact: Original-Rcpt-To is often missing and the original's To may be "redacted@…", so the
caller matches by VERP first and by Message-ID second. At most `mime.MAX_REPORT_BYTES` are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import Message

from envoi.mta.bounces import mime

FEEDBACK_TYPES = ("abuse", "fraud", "virus", "other", "not-spam", "auth-failure", "dmarc")


@dataclass
class Arf:
    is_report: bool = False  # a multipart/report with a message/feedback-report part
    feedback_type: str = ""  # abuse | fraud | virus | other | not-spam | auth-failure | ""
    user_agent: str = ""
    version: str = ""
    original_mail_from: str = ""  # the envelope sender of the original (our VERP address)
    original_rcpt_to: list[str] = field(default_factory=list)  # the complaining recipient(s)
    arrival_date: str = ""
    source_ip: str = ""
    reported_domain: str = ""
    original_message_id: str = ""  # without brackets
    original_to: str = ""  # the original's To header, address only, lower-cased
    original_from: str = ""
    original_subject: str = ""
    original_return_path: str = ""  # Return-Path of the original, address only

    @property
    def is_complaint(self) -> bool:
        """Abuse-like reports (spam button); not-spam and auth-failure reports are not complaints."""
        return self.is_report and self.feedback_type in ("abuse", "fraud", "virus", "other", "")

    @property
    def verp_candidates(self) -> list[str]:
        return [a for a in (self.original_mail_from, self.original_return_path) if a]

    @property
    def recipients(self) -> list[str]:
        """Who complained: Original-Rcpt-To, else the original's To."""
        if self.original_rcpt_to:
            return self.original_rcpt_to
        return [self.original_to] if self.original_to else []


def parse(raw: bytes | str | Message) -> Arf:
    """Parse one feedback report. Garbage gives an empty Arf (is_report False), never an exception."""
    message = raw if isinstance(raw, Message) else mime.parse_message(raw)
    if message is None:
        return Arf()
    try:
        return _parse(message)
    except Exception:
        return Arf()


def _parse(message: Message) -> Arf:
    arf = Arf()
    parts = mime.walk(message)
    report = next((p for p in parts if mime.content_type(p) == "message/feedback-report"), None)
    if report is not None:
        arf.is_report = True
        fields: dict[str, str] = {}
        for block in mime.field_blocks(mime.part_text(report)):
            for key, value in block.items():
                fields.setdefault(key, value)
        kind = fields.get("feedback-type", "").strip().lower()
        arf.feedback_type = kind if kind in FEEDBACK_TYPES else ("other" if kind else "")
        arf.user_agent = fields.get("user-agent", "")[:200]
        arf.version = fields.get("version", "")[:20]
        arf.original_mail_from = mime.address_of(fields.get("original-mail-from", ""))
        rcpts = [mime.address_of(v) for v in fields.get("original-rcpt-to", "").split(",")]
        arf.original_rcpt_to = [r for r in dict.fromkeys(rcpts) if r][:50]
        arf.arrival_date = fields.get("arrival-date", fields.get("received-date", ""))[:100]
        arf.source_ip = fields.get("source-ip", "").split(",")[0].strip()[:64]
        arf.reported_domain = fields.get("reported-domain", "").strip().lower()[:255]
    original = mime.original_message(parts)
    if original is not None:
        arf.original_message_id = mime.message_id_of(mime.header(original, "message-id"))
        arf.original_to = mime.address_of(mime.header(original, "to"))
        arf.original_from = mime.address_of(mime.header(original, "from"))
        arf.original_subject = mime.header(original, "subject")[:500]
        arf.original_return_path = mime.address_of(mime.header(original, "return-path"))
    return arf
