"""The relay's last stage: what the outcomes of delivery attempts mean (`plan`, a pure function) and
their group-committed write (`Recorder`).

`plan` decides, from the outcomes and the state of each message and recipient, which recipients are
finished, which are tried again when, which events say so and which messages will be sent again
(their DKIM signature is worth keeping). Recorder writes a plan in one commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from envoi.events.service import Events, NewEvent, item
from envoi.infra.db import Database
from envoi.mta import store
from envoi.mta.delivery import retry
from envoi.mta.delivery.outcome import BounceClass, Kind, Outcome

log = logging.getLogger("envoi.relay")


class Attempted(Protocol):
    """What plan() reads of a delivery: its message (the relay's Delivery is one)."""

    message: dict


Result = tuple[Attempted, dict, Outcome]  # (delivery, recipient row, outcome)
Deferral = tuple[dict, float]  # (recipient row, seconds): put back, no attempt counted


@dataclass
class Plan:
    finished: list[tuple[int, str, int, str]] = field(default_factory=list)  # (id, status, code, text)
    # (id, next attempt, code, text, counts as an attempt)
    rescheduled: list[tuple[int, datetime, int | None, str | None, bool]] = field(default_factory=list)
    events: list[NewEvent] = field(default_factory=list)
    pending: set[int] = field(default_factory=set)  # message pks that will be sent again
    suppress: list[tuple[dict, str, Outcome]] = field(default_factory=list)  # (message, address, outcome)
    delivered_ages: list[float] = field(default_factory=list)  # seconds from accept to delivery
    failures: list[tuple[str, str]] = field(default_factory=list)  # (severity, bounce class)


def plan(results: Sequence[Result], deferrals: Sequence[Deferral], *, now: float,
         retry_schedule: Sequence[float]) -> Plan:
    """What the outcomes mean, at time `now` (epoch seconds). Touches nothing."""
    out = Plan()
    now_dt = datetime.fromtimestamp(now, UTC)
    finished, rescheduled, events, failures = out.finished, out.rescheduled, out.events, out.failures
    for rcpt, seconds in deferrals:
        rescheduled.append((rcpt["id"], now_dt + timedelta(seconds=seconds), None, None, False))
    for delivery, rcpt, outcome in results:
        message = delivery.message
        attempt_no = rcpt["attempts"] + 1
        status = delivery_status(outcome, attempt_no)
        common = {"message": message, "recipient": rcpt["address"], "ts": now,
                  "envelope": {"sender": message["mail_from"], "targets": rcpt["address"],
                               "transport": "smtp", "sending-ip": outcome.sending_ip},
                  "method": message["method"]}  # known here: spares Events.record a lookup
        if outcome.kind is Kind.DELIVERED:
            finished.append((rcpt["id"], "delivered", outcome.code, outcome.message))
            data = item("delivered", delivery_status=status, **common)
            out.delivered_ages.append(now - float(message["created_ts"]))
        elif outcome.kind is Kind.FAILED:
            finished.append((rcpt["id"], "failed", outcome.code, outcome.message))
            data = item("failed", severity="permanent", reason=failure_reason(outcome),
                        delivery_status=status, log_level="error", **common)
            failures.append(("permanent", outcome.bounce_class or "other"))
        else:
            delay = retry.next_delay(retry_schedule, attempt_no, outcome.retry_after)
            next_at = now_dt + timedelta(seconds=delay)
            if next_at > rcpt["expires_at"]:
                finished.append((rcpt["id"], "failed", outcome.code, outcome.message))
                status["message"] = "Too old"
                status["description"] = f"Gave up after {attempt_no} attempts; last: {outcome.message}"
                data = item("failed", severity="permanent", reason="old", delivery_status=status,
                            log_level="error", **common)
                failures.append(("permanent", BounceClass.EXPIRED))
            else:
                rescheduled.append((rcpt["id"], next_at, outcome.code, outcome.message, True))
                status["retry-seconds"] = int(delay)
                data = item("failed", severity="temporary", reason="generic", delivery_status=status,
                            log_level="warn", **common)
                failures.append(("temporary", outcome.bounce_class or "other"))
        events.append(NewEvent(message["account_id"], message["domain_id"], message["id"], data))
        if outcome.recipient_class:
            out.suppress.append((message, rcpt["address"], outcome))
    finished_ids = {rid for rid, *_ in finished}
    pending = out.pending
    pending.update(d.message["id"] for d, r, _ in results if r["id"] not in finished_ids)
    pending.update(r["message_pk"] for r, _ in deferrals)
    pending.update(d.message["id"] for d, _, _ in results if d.message.get("recipient_count", 2) > 1)
    return out


def delivery_status(outcome: Outcome, attempt_no: int) -> dict:
    return {
        "code": outcome.code,
        "message": outcome.message,
        "description": outcome.description,
        "enhanced-code": outcome.enhanced_code,
        "attempt-no": attempt_no,
        "mx-host": outcome.mx_host,
        "tls": outcome.tls,
        "certificate-verified": outcome.certificate_verified,
        "session-seconds": outcome.session_seconds,
        "utf8": True,
        "bounce-class": str(outcome.bounce_class),
    }


def failure_reason(outcome: Outcome) -> str:
    if reason := outcome.extra.get("reason"):
        return reason
    return "bounce" if outcome.code >= 500 else "generic"


class Recorder:
    """Collects outcomes and writes them by group commit: everything that came in since the last write
    in one commit that updates the schedule and records the events together, at most one write per
    `flush_delay` while outcomes keep coming (at once after a quiet spell, or when `full_at` wait).
    `settled(results, deferrals)` is called once they are committed (or given up on)."""

    def __init__(self, db: Database, events: Events, retry_schedule: Sequence[float], *,
                 signatures: dict[int, str], settled: Callable[[list[Result], list[Deferral]], None],
                 flush_delay: float = 0.0, full_at: int = 1, suppressions=None, metrics=None):
        self.db = db
        self.flush_delay = flush_delay
        self.full_at = full_at  # one outcome per connection: write without waiting out the delay
        self.events = events
        self.retry_schedule = retry_schedule
        self.signatures = signatures  # message pk -> DKIM signature not stored yet (the preparer's)
        self.settled = settled
        # suppressions.record_failures(conn, [(message, address, outcome)]) for recipient-class hard bounces
        self.suppressions = suppressions
        self.metrics = metrics
        self.results: list[Result] = []
        self.deferrals: list[Deferral] = []
        self.stats = {"flushes": 0, "flush_s": 0.0, "outcomes": 0}
        self._wake = asyncio.Event()  # an outcome waits to be written
        self._full = asyncio.Event()  # full_at outcomes wait: write without delay

    def result(self, delivery: Attempted, rcpt: dict, outcome: Outcome) -> None:
        self.results.append((delivery, rcpt, outcome))
        if log.isEnabledFor(logging.DEBUG):  # to follow one message across processes (ENVOI_LOG_FORMAT=json)
            log.debug("outcome %s %s", outcome.kind.value, outcome.code,
                      extra={"message_id": delivery.message.get("message_id")})
        self._waiting()

    def _waiting(self) -> None:
        self._wake.set()
        if len(self.results) + len(self.deferrals) >= self.full_at:
            self._full.set()

    def result_each(self, delivery, outcome: Outcome) -> None:
        """The same outcome for every recipient of a delivery."""
        for rcpt in delivery.recipients:
            self.result(delivery, rcpt, outcome)

    def defer(self, rcpts: Iterable[dict], seconds: float) -> None:
        """Put recipients back for later without an attempt or an event (throttled, no egress)."""
        seconds = max(seconds, 1.0)
        self.deferrals.extend((rcpt, seconds) for rcpt in rcpts)
        self._waiting()

    async def run(self) -> None:
        # Group commit with a floor between writes: while outcomes keep coming, a write starts at most
        # every flush_delay (sooner once one outcome per connection waits), and what came in meanwhile
        # goes with it; an outcome after a quiet spell is written at once. A write costs ~1 ms of the
        # relay's CPU and ~0.6 ms of Postgres's whatever its size, an outcome ~0.1 ms in all: writing
        # each outcome as soon as the writer was free made writes of 1-3 outcomes on a quiet machine
        # (fast commits) and doubled the relay's CPU per message. Senders never wait on the delay for
        # a slot: with no write under way, all slots taken means one outcome per connection waits. A
        # message the remote accepted is re-sent if the relay dies before its outcome is committed:
        # at most the unrecorded slots, whatever the delay.
        loop = asyncio.get_running_loop()
        last_write = float("-inf")
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._full.clear()
            wait = last_write + self.flush_delay - loop.time()
            if wait > 0 and len(self.results) + len(self.deferrals) < self.full_at:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), wait)
                self._wake.clear()
            last_write = loop.time()
            await self.flush()

    async def flush(self) -> None:
        if not self.results and not self.deferrals:
            return
        results, self.results = self.results, []
        deferrals, self.deferrals = self.deferrals, []
        held = {r["message_pk"] for _, r, _ in results} | {r["message_pk"] for r, _ in deferrals}
        signatures = {pk: self.signatures[pk] for pk in held if pk in self.signatures}
        started = time.monotonic()
        events: list[NewEvent] = []
        for attempt in range(10):
            try:
                events = await asyncio.to_thread(self.write, results, signatures, deferrals)
                self.stats["flushes"] += 1
                self.stats["flush_s"] += time.monotonic() - started
                self.stats["outcomes"] += len(results) + len(deferrals)
                break
            except Exception:
                # Postgres is away: keep the outcomes and try again; the leases keep others off them.
                log.exception("recording %d outcomes failed (attempt %d)", len(results), attempt + 1)
                await asyncio.sleep(min(2**attempt * 0.1, 5))
        else:
            log.error("dropping %d outcomes after retries; their leases will expire and they will be retried",
                      len(results))
        self.settled(results, deferrals)
        if events:
            self.events.committed(events)

    def write(self, results: list[Result], signatures: dict[int, str],
              deferrals: list[Deferral] = ()) -> list[NewEvent]:
        """Plan and write in one commit; return the events recorded."""
        done = plan(results, deferrals, now=time.time(), retry_schedule=self.retry_schedule)
        with self.db.pipelined() as conn:
            # Only messages that will be sent again need their signature kept.
            store.save_dkim_signatures(conn, {pk: sig for pk, sig in signatures.items() if pk in done.pending})
            store.finish(conn, done.finished)
            store.reschedule(conn, done.rescheduled)
            if done.events:
                self.events.record(conn, done.events)
            if self.suppressions is not None and done.suppress:
                self.suppressions.record_failures(conn, done.suppress)
        if self.metrics:
            for age in done.delivered_ages:
                self.metrics.observe_delivered(age)
            for severity, bounce_class in done.failures:
                self.metrics.failed.labels(severity, bounce_class).inc()
        return done.events
