"""Asynchronous bounces and complaints: turn an inbound DSN or ARF report into events.

`Bounces.check_recipient()` decides at RCPT time what the inbound listener accepts:
VERP addresses with a valid HMAC (`bounce+…@any domain`), the FBL addresses (ENVOI_FBL_ADDRESSES:
"fbl" = fbl@ any of our domains, or full addresses) and postmaster@ our domains (RFC 5321 says a
receiving host must). Everything else gets 550 5.1.1.

`Bounces.process()` reads the report and, in ONE transaction:

* DSN with a permanent failure (Action failed, Status 5.x.x) -> a `failed` event, severity
  permanent, reason bounce, flags.is-delayed-bounce true, delivery-status from the DSN
  (Diagnostic-Code, Status, Remote-MTA), classified like a live reply; the recipient row keeps its
  status (Mailgun also emits this failed event after `delivered`). A recipient-class failure
  (unknown user, disabled mailbox) calls `suppressions.record_failures()`; a full mailbox, a spam
  block or a policy rejection does not.
* ARF abuse report -> a `complained` event (the suppression package's events writer turns it into a
  complaint entry in the same transaction).
* delayed / delivered DSNs, not-spam reports, and reports that match no message: nothing recorded
  (logged), and the caller still answers 250 so the remote does not retry.

Each (recipient, bounce|complaint) is recorded at most once (table bounce_reports), so a report
sent twice, or two reports about the same recipient, give one event.

Finding the message: the VERP address (RCPT, or the original's Return-Path / Original-Mail-From
inside the report), else the original's Message-ID among the messages of the domain the report was
sent to (tenant-scoped). Finding the recipient: the per-recipient VERP; else the DSN's
Original-Recipient / Final-Recipient (ARF: Original-Rcpt-To, the original's To) among the message's
recipients; else, when the message has exactly one recipient and VERP or an ARF named it, that one.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from envoi.events.service import Events, NewEvent, item
from envoi.infra.db import Connection, Database
from envoi.mta.bounces import arf, dsn, mime, verp
from envoi.mta.bounces import store as bstore
from envoi.mta.delivery.outcome import Kind, Outcome, classify_reply

log = logging.getLogger("envoi.bounces")
DOMAIN_CACHE_SECONDS = 60.0


@dataclass
class Report:
    """What one inbound report came to (for logs, metrics and tests)."""

    kind: str  # "dsn" | "arf" | "other"
    recorded: list[tuple[str, str, int]] = field(default_factory=list)  # (event, address, message pk)
    suppressed: list[str] = field(default_factory=list)  # addresses passed to record_failures
    note: str = ""


@dataclass(frozen=True)
class _Target:
    verp: tuple[int, int | None] | None = None
    domain: str = ""  # the RCPT domain (one of ours) for FBL / postmaster addresses
    platform: bool = False  # a full FBL address of the platform itself (not a customer domain)


def dsn_outcome(block: dsn.DsnRecipient) -> Outcome:
    """The Outcome of one failed DSN recipient block, classified like a live SMTP reply."""
    diagnostic = " ".join(block.diagnostic_code.split())
    code, enhanced, klass = classify_reply(diagnostic, block.status)
    if enhanced.startswith("5") and code < 500:
        code = 550  # the Status says permanent, whatever code the text quoted
    text = re.sub(r"^\s*smtp\s*;\s*", "", diagnostic, flags=re.I) or f"{enhanced} delivery failed"
    return Outcome(Kind.FAILED, code, text[:1000], enhanced_code=enhanced, mx_host=block.remote_mta,
                   bounce_class=klass, description="Asynchronous bounce (DSN)")


class Bounces:
    def __init__(self, db: Database, events: Events, *, verp_key: bytes, fbl_addresses: tuple[str, ...] = ("fbl",),
                 bounce_domain: str | None = None, suppressions=None,
                 clock: Callable[[], float] = time.monotonic, previous_verp_keys: tuple[bytes, ...] = ()):
        self.db = db
        self.events = events
        self.verp_key = verp_key
        # Return paths of mail sent before a key rotation still match while their key is listed.
        self.verp_keys = (verp_key, *previous_verp_keys)
        self.fbl_full = {a.lower() for a in fbl_addresses if "@" in a}
        self.fbl_local = {a.lower() for a in fbl_addresses if "@" not in a} | {"postmaster"}
        self.bounce_domain = (bounce_domain or "").lower()
        # suppressions: record_failures(conn, [(message_row, address, outcome)]); None = not wired.
        self.suppressions = suppressions
        self._clock = clock
        self._domains: dict[str, tuple[float, dict | None]] = {}

    # RCPT ------------------------------------------------------------------------------------
    def check_recipient(self, address: str) -> str | None:
        """None to accept the address, else the SMTP reply that refuses it."""
        target = self._target(address)
        if target is None:
            return "550 5.1.1 No such user here"
        return None

    def _target(self, address: str) -> _Target | None:
        address = (address or "").strip().strip("<>").lower()
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain or len(address) > 320:
            return None
        if verp.looks_like_verp(address):
            parsed = self._verp(address)
            return _Target(verp=parsed) if parsed else None  # a forged or mangled VERP: refused
        if address in self.fbl_full:
            return _Target(domain=domain, platform=True)
        if local in self.fbl_local and (domain == self.bounce_domain or self._domain(domain) is not None):
            return _Target(domain=domain, platform=domain == self.bounce_domain)
        return None

    def _verp(self, address: str) -> tuple[int, int | None] | None:
        return next((parsed for key in self.verp_keys if (parsed := verp.parse(address, key))), None)

    def _domain(self, name: str) -> dict | None:
        now = self._clock()
        cached = self._domains.get(name)
        if cached and cached[0] > now:
            return cached[1]
        with self.db.transaction() as conn:
            rows = bstore.domains_named(conn, [name])
        row = rows[0] if rows else None
        if len(self._domains) > 10_000:
            self._domains.clear()
        self._domains[name] = (now + DOMAIN_CACHE_SECONDS, row)
        return row

    # DATA ------------------------------------------------------------------------------------
    def process(self, rcpt_tos: list[str], raw: bytes) -> Report:
        targets = [t for t in (self._target(a) for a in rcpt_tos) if t is not None]
        message = mime.parse_message(raw)  # parsed once, read by both parsers
        if message is None:
            return Report("other", note="unparseable")
        complaint = arf.parse(message)
        if complaint.is_report:
            return self._complaint(targets, complaint)
        return self._bounce(targets, dsn.parse(message))

    def _verp_of(self, targets: list[_Target], extra: list[str]) -> tuple[int, int | None] | None:
        for target in targets:
            if target.verp:
                return target.verp
        for address in extra:
            parsed = self._verp(address) if address else None
            if parsed:
                return parsed
        return None

    def _scope(self, conn: Connection, targets: list[_Target], fallback_domains: list[str]) -> list[int]:
        """Domain ids a Message-ID lookup may search: the customer domains the report was sent to;
        for a platform-wide FBL address, the original's From / Reported-Domain if they are ours."""
        names = {t.domain for t in targets if t.domain and not t.platform}
        if not names and any(t.platform for t in targets):
            names = {d for d in fallback_domains if d}
        if not names:
            return []
        return [row["id"] for row in bstore.domains_named(conn, sorted(names))]

    def _bounce(self, targets: list[_Target], report: dsn.Dsn) -> Report:
        result = Report("dsn")
        if not report.recipients:
            result.note = "not a delivery report"
            return result
        failures = report.failures
        if not failures:
            result.note = "no permanent failure (" + ",".join(
                sorted({r.action or r.status or "?" for r in report.recipients})) + ")"
            return result
        found = self._verp_of(targets, [report.original_return_path])
        new_events: list[NewEvent] = []
        with self.db.transaction() as conn:
            if found:
                message = bstore.message_by_pk(conn, found[0])
            else:
                scope = self._scope(conn, targets, [])
                message = bstore.message_by_message_id(conn, scope, report.original_message_id)
            if message is None:
                result.note = "no matching message"
                return result
            rows = bstore.recipients_of(conn, message["id"])
            pairs = _match_dsn(failures, rows, found)
            hard = []
            for row, block in pairs:
                if not bstore.claim_report(conn, row["id"], "bounce"):
                    continue
                outcome = dsn_outcome(block)
                data = _failed_event(message, row, outcome, report)
                new_events.append(NewEvent(message["account_id"], message["domain_id"], message["id"], data))
                result.recorded.append(("failed", row["address"], message["id"]))
                if outcome.recipient_class:
                    hard.append((message, row["address"], outcome))
            self.events.record(conn, new_events)
            if hard and self.suppressions is not None:
                self.suppressions.record_failures(conn, hard)
                result.suppressed = [address for _, address, _ in hard]
        self.events.committed(new_events)
        if not result.recorded:
            result.note = "no matching recipient" if not pairs else "already recorded"
        return result

    def _complaint(self, targets: list[_Target], report: arf.Arf) -> Report:
        result = Report("arf")
        if not report.is_complaint:
            result.note = f"feedback-type {report.feedback_type} is not a complaint"
            return result
        found = self._verp_of(targets, report.verp_candidates)
        new_events: list[NewEvent] = []
        with self.db.transaction() as conn:
            if found:
                message = bstore.message_by_pk(conn, found[0])
            else:
                fallback = [report.original_from.rpartition("@")[2], report.reported_domain]
                scope = self._scope(conn, targets, fallback)
                message = bstore.message_by_message_id(conn, scope, report.original_message_id)
            if message is None:
                result.note = "no matching message"
                return result
            rows = bstore.recipients_of(conn, message["id"])
            row = _match_complaint(report, rows, found)
            if row is None:
                result.note = "no matching recipient"
                return result
            if not bstore.claim_report(conn, row["id"], "complaint"):
                result.note = "already recorded"
                return result
            data = item("complained", message=_event_message(message), recipient=row["address"])
            new_events.append(NewEvent(message["account_id"], message["domain_id"], message["id"], data))
            result.recorded.append(("complained", row["address"], message["id"]))
            self.events.record(conn, new_events)
        self.events.committed(new_events)
        return result


def _match_dsn(failures: list[dsn.DsnRecipient], rows: list[dict],
               found: tuple[int, int | None] | None) -> list[tuple[dict, dsn.DsnRecipient]]:
    by_address = {r["address"].lower(): r for r in rows}
    by_id = {r["id"]: r for r in rows}

    def named(block: dsn.DsnRecipient) -> dict | None:
        for address in (block.original_recipient, block.final_recipient):
            if address and address in by_address:
                return by_address[address]
        return None

    if found and found[1] is not None:  # per-recipient VERP: only that recipient can have failed
        row = by_id.get(found[1])
        if row is None:
            return []
        block = next((b for b in failures if named(b) is row), None)
        if block is None and len(failures) == 1:
            block = failures[0]  # forwarded: the final recipient is an address we never sent to
        return [(row, block)] if block is not None else []
    pairs: dict[int, tuple[dict, dsn.DsnRecipient]] = {}
    for block in failures:
        row = named(block)
        if row is not None and row["id"] not in pairs:
            pairs[row["id"]] = (row, block)
    if not pairs and found and len(rows) == 1 and len(failures) == 1:
        pairs[rows[0]["id"]] = (rows[0], failures[0])
    return list(pairs.values())


def _match_complaint(report: arf.Arf, rows: list[dict], found: tuple[int, int | None] | None) -> dict | None:
    if found and found[1] is not None:
        return next((r for r in rows if r["id"] == found[1]), None)
    by_address = {r["address"].lower(): r for r in rows}
    for address in report.recipients:
        if address in by_address:
            return by_address[address]
    # FBLs redact the recipient; a message with one recipient can only be about that one.
    return rows[0] if len(rows) == 1 else None


def _event_message(message: dict) -> dict:
    return {"headers": message["headers"], "tags": message["tags"], "user_variables": message["user_variables"],
            "options": message["options"], "attachments": message["attachments"], "size": message["size"]}


def _failed_event(message: dict, row: dict, outcome: Outcome, report: dsn.Dsn) -> dict:
    status = {
        "code": outcome.code,
        "message": outcome.message,
        "description": outcome.description,
        "enhanced-code": outcome.enhanced_code,
        "attempt-no": row["attempts"],
        "mx-host": outcome.mx_host,
        "bounce-class": str(outcome.bounce_class),
        "reporting-mta": report.reporting_mta,
    }
    data = item("failed", message=_event_message(message), recipient=row["address"], severity="permanent",
                reason="bounce", delivery_status=status, log_level="error",
                envelope={"sender": message["mail_from"], "targets": row["address"], "transport": "smtp"})
    data["flags"]["is-delayed-bounce"] = True
    return data
