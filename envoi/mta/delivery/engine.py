"""The relay: takes due recipients from Postgres and delivers them over reused SMTP sessions.

Flow: a claimer leases due recipients (Postgres is the queue; Redis only rings a doorbell), groups
them into deliveries (one message to the recipients it has at one domain), and hands each to the
ready queue of its destination. Per destination, up to N workers hold SMTP sessions open and send
delivery after delivery over them. Outcomes are written back in batches, each batch one commit that
updates the schedule and records the events together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from envoi.accounts.service import Accounts
from envoi.events.service import Events, NewEvent, item
from envoi.infra.crypto import Sealer
from envoi.infra.db import Database
from envoi.infra.settings import Settings
from envoi.mta import store
from envoi.mta.delivery import retry
from envoi.mta.delivery.mx import DnsPermanentError, DnsTemporaryError, MxResolver
from envoi.mta.delivery.outcome import BounceClass, Kind, Outcome
from envoi.mta.delivery.session import Egress, Session, SessionError, connection_failure
from envoi.mta.signing import DkimSigner

log = logging.getLogger("envoi.relay")
LEASE_SECONDS = 600
IDLE_SECONDS = 5.0


@dataclass
class Delivery:
    """One message to the recipients it has at one destination domain."""

    message: dict
    domain: dict
    recipients: list[dict]  # recipient rows
    egress: Egress
    claimed_at: float = field(default_factory=time.monotonic)


@dataclass
class Destination:
    key: tuple[str | None, str]  # (egress address, recipient domain)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    workers: int = 0


class Relay:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        accounts: Accounts,
        sealer: Sealer,
        *,
        events: Events,
        resolver: MxResolver,
        signer: DkimSigner | None = None,
        wait_for_work: Callable[[float], bool] | None = None,
        metrics=None,
        suppressions=None,
        egress: Callable[[dict, dict], Egress] | None = None,
    ):
        self.settings = settings
        self.db = db
        self.accounts = accounts
        self.sealer = sealer
        self.resolver = resolver
        self.signer = signer or DkimSigner()
        self.wait_for_work = wait_for_work  # blocking doorbell wait, run in a thread
        self.metrics = metrics
        self.events = events
        # suppressions: blocked(account_id, domain_id, addresses) -> {address: reason} before sending,
        # and record_failures(conn, [(message, address, outcome)]) for recipient-class hard bounces.
        self.suppressions = suppressions
        self.choose_egress = egress
        self.destinations: dict[tuple, Destination] = {}
        self.inflight = 0
        self.capacity = max(settings.relay_batch * 2, 100)
        self.max_connections_per_destination = max(1, min(settings.relay_connections, 20))
        self.connections = asyncio.Semaphore(settings.relay_connections)
        self.results: list[tuple[dict, dict, Outcome]] = []
        self.signatures: dict[int, str] = {}
        self._domains: dict[int, tuple[float, dict, bytes]] = {}
        self._workers: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()
        self._flushed = asyncio.Event()

    # lifecycle --------------------------------------------------------------------------------
    async def run(self) -> None:
        flusher = asyncio.create_task(self._flush_loop())
        try:
            await self._claim_loop()
        finally:
            self._stopping.set()
            await self._drain()
            for task in list(self._workers):
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            await self._flush()

    def stop(self) -> None:
        self._stopping.set()

    async def _drain(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # claiming ---------------------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            room = self.capacity - self.inflight
            claimed = 0
            if room > 0:
                try:
                    claimed = await self._claim(min(room, self.settings.relay_batch))
                except Exception:
                    log.exception("claiming due recipients failed; retrying shortly")
                    await asyncio.sleep(1)
                    continue
            if claimed >= min(room, self.settings.relay_batch) and claimed:
                await asyncio.sleep(0)  # more is due right now: claim again at once
            elif room <= 0:
                await asyncio.sleep(0.02)
            else:
                await self._idle_wait()

    async def _idle_wait(self) -> None:
        if self.wait_for_work is None:
            await asyncio.sleep(0.5)
            return
        # The doorbell only shortens the wait; the poll every second is what guarantees progress.
        waiter = asyncio.create_task(asyncio.to_thread(self.wait_for_work, 1.0))
        stopper = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()

    async def _claim(self, limit: int) -> int:
        rows, messages, blocked = await asyncio.to_thread(self._claim_sync, limit)
        if not rows:
            return 0
        groups: dict[tuple[int, str], list[dict]] = defaultdict(list)
        for row in rows:
            reason = blocked.get(row["id"])
            if reason is not None:
                # Suppressed: a permanent failure that says why, and nothing is sent.
                message = messages[row["message_pk"]]
                domain, _ = self._domain(message["domain_id"])
                self.inflight += 1
                self._result(Delivery(message, domain, [row], Egress(None, "")), row, suppressed(reason))
                continue
            groups[(row["message_pk"], row["rcpt_domain"])].append(row)
        for (message_pk, rcpt_domain), recipients in groups.items():
            message = messages[message_pk]
            domain, _ = self._domain(message["domain_id"])
            delivery = Delivery(message, domain, recipients, self.egress_for(message, domain))
            self.inflight += len(recipients)
            self._dispatch(delivery, rcpt_domain)
        return len(rows)

    def _claim_sync(self, limit: int) -> tuple[list[dict], dict[int, dict], dict[int, str]]:
        blocked: dict[int, str] = {}
        with self.db.transaction() as conn:
            rows = store.claim_due(conn, limit, LEASE_SECONDS)
            if not rows:
                return [], {}, {}
            messages = {m["id"]: m for m in store.load_messages(conn, list({r["message_pk"] for r in rows}))}
            if self.suppressions is not None:
                checks = [(r["account_id"], r["domain_id"], r["address"], messages[r["message_pk"]]["tags"])
                          for r in rows]
                for row, reason in zip(rows, self.suppressions.blocked(conn, checks), strict=True):
                    if reason:
                        blocked[row["id"]] = reason
            missing: set[int] = set()
            stale = {d for d, (at, _, _) in self._domains.items() if time.monotonic() - at > 60}
            for m in messages.values():
                if m["domain_id"] not in self._domains or m["domain_id"] in stale:
                    missing.add(m["domain_id"])
        for domain_id in missing:
            domain = self.accounts.get_domain_by_id(domain_id)
            self._domains[domain_id] = (time.monotonic(), domain, self.accounts.dkim_private_key(domain))
        return rows, messages, blocked

    def _domain(self, domain_id: int) -> tuple[dict, bytes]:
        _, domain, pem = self._domains[domain_id]
        return domain, pem

    def egress_for(self, message: dict, domain: dict) -> Egress:
        """Which source address sends this message. Decided at delivery time, not at accept."""
        if self.choose_egress is not None:
            return self.choose_egress(message, domain)
        return Egress(None, self.settings.helo_name)

    # dispatch ---------------------------------------------------------------------------------
    def _dispatch(self, delivery: Delivery, rcpt_domain: str) -> None:
        options = delivery.message["options"] or {}
        if options.get("testmode"):
            # Test mode: accepted and recorded as delivered with Mailgun's code 650, never sent.
            outcome = Outcome(Kind.DELIVERED, 650, "Test mode", description="test mode")
            for rcpt in delivery.recipients:
                self._result(delivery, rcpt, outcome)
            return
        key = (delivery.egress.address, rcpt_domain)
        dest = self.destinations.get(key)
        if dest is None:
            dest = self.destinations[key] = Destination(key)
        dest.queue.put_nowait(delivery)
        if dest.workers < self.max_connections_per_destination and dest.queue.qsize() > dest.workers - 1:
            dest.workers += 1
            task = asyncio.create_task(self._worker(dest))
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def _worker(self, dest: Destination) -> None:
        session: Session | None = None
        try:
            async with self.connections:
                while True:
                    try:
                        delivery = await asyncio.wait_for(dest.queue.get(), IDLE_SECONDS)
                    except TimeoutError:
                        return
                    if session is None or not session.usable:
                        try:
                            session = await self._connect(dest, delivery)
                        except SessionError as ex:
                            session = None
                            # The destination is unreachable: what is queued for it shares the fate.
                            self._fail_delivery(delivery, ex.outcome)
                            self._fail_queued(dest, ex.outcome)
                            continue
                        except (DnsTemporaryError, DnsPermanentError) as ex:
                            self._fail_delivery(delivery, dns_outcome(ex))
                            self._fail_queued(dest, dns_outcome(ex))
                            continue
                    try:
                        await self._send(session, delivery)
                    except SessionError as ex:  # the session broke mid-transaction: only this one retries
                        session = None
                        self._fail_delivery(delivery, ex.outcome)
                    except Exception as ex:  # never lose a claimed recipient to a bug: retry it
                        log.exception("delivery crashed")
                        self._fail_delivery(delivery, connection_failure(f"internal error: {ex}", {}))
        finally:
            dest.workers -= 1
            if session is not None:
                await session.close()
            if dest.workers == 0 and dest.queue.empty():
                self.destinations.pop(dest.key, None)

    def _fail_queued(self, dest: Destination, outcome: Outcome) -> None:
        while not dest.queue.empty():
            self._fail_delivery(dest.queue.get_nowait(), outcome)

    def _fail_delivery(self, delivery: Delivery, outcome: Outcome) -> None:
        for rcpt in delivery.recipients:
            self._result(delivery, rcpt, outcome)

    async def _connect(self, dest: Destination, delivery: Delivery) -> Session:
        domain = dest.key[1]
        options = delivery.message["options"] or {}
        require_tls = bool(options.get("require_tls", delivery.domain.get("require_tls")))
        verify = require_tls and not options.get("skip_verification", delivery.domain.get("skip_verification"))
        if self.settings.smtp_route:
            host, port = self.settings.smtp_route
            targets = [(host, host, port)]
        else:
            targets = []
            for mx in await self.resolver.mx(domain):
                try:
                    for address in await self.resolver.addresses(mx.host):
                        targets.append((mx.host, address, self.settings.remote_smtp_port))
                except DnsTemporaryError:
                    continue
            if not targets:
                raise DnsTemporaryError(f"no address found for any MX of {domain}")
        last: SessionError | None = None
        for mx_host, address, port in targets:
            session = Session(mx_host, address, port, delivery.egress, self.settings.smtp_timeout)
            try:
                await session.open(require_tls=require_tls, verify_tls=verify)
                return session
            except SessionError as ex:
                last = ex
                if ex.outcome.kind is Kind.FAILED and ex.outcome.code >= 500 and ex.outcome.code != 554:
                    break
        raise last

    async def _send(self, session: Session, delivery: Delivery) -> None:
        message = delivery.message
        data = self._signed(message, delivery.domain)
        addresses = [r["address"] for r in delivery.recipients]
        outcomes = await session.send(message["mail_from"], addresses, data)
        for rcpt in delivery.recipients:
            self._result(delivery, rcpt, outcomes[rcpt["address"]])

    def _signed(self, message: dict, domain: dict) -> bytes:
        body = self.sealer.open(message["body"], message["storage_key"].encode())
        if (message["options"] or {}).get("dkim") is False:
            return body
        signature = message["dkim_signature"] or self.signatures.get(message["id"])
        if signature is None:
            _, pem = self._domain(domain["id"])
            started = time.perf_counter()
            signature = self.signer.sign(body, domain=domain["name"], selector=domain["dkim_selector"],
                                         private_key_pem=pem).decode()
            if self.metrics:
                self.metrics.dkim_seconds.observe(time.perf_counter() - started)
            # Signed once per message: the header is stored with the outcome and reused on retries.
            self.signatures[message["id"]] = signature
            message["dkim_signature"] = signature
        return signature.encode() + body

    # outcomes ---------------------------------------------------------------------------------
    def _result(self, delivery: Delivery, rcpt: dict, outcome: Outcome) -> None:
        self.results.append((delivery, rcpt, outcome))
        if len(self.results) >= 200:
            self._flushed.set()

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flushed.wait(), 0.05)
            self._flushed.clear()
            await self._flush()

    async def _flush(self) -> None:
        if not self.results:
            return
        results, self.results = self.results, []
        signatures, self.signatures = self.signatures, {}
        for attempt in range(10):
            try:
                events = await asyncio.to_thread(self._record, results, signatures)
                break
            except Exception:
                # Postgres is away: keep the outcomes and try again; the leases keep others off them.
                log.exception("recording %d outcomes failed (attempt %d)", len(results), attempt + 1)
                await asyncio.sleep(min(2**attempt * 0.1, 5))
        else:
            log.error("dropping %d outcomes after retries; their leases will expire and they will be retried",
                      len(results))
            self.inflight -= len(results)
            return
        self.inflight -= len(results)
        self.events.committed(events)

    def _record(self, results: list[tuple[Delivery, dict, Outcome]], signatures: dict[int, str]) -> list[NewEvent]:
        now = time.time()
        now_dt = datetime.fromtimestamp(now, UTC)
        finished, rescheduled, new_events = [], [], []
        for delivery, rcpt, outcome in results:
            message = delivery.message
            attempt_no = rcpt["attempts"] + 1
            status = delivery_status(outcome, attempt_no)
            common = {"message": _event_message(message), "recipient": rcpt["address"], "ts": now,
                      "envelope": {"sender": message["mail_from"], "targets": rcpt["address"],
                                   "transport": "smtp", "sending-ip": outcome.sending_ip}}
            if outcome.kind is Kind.DELIVERED:
                finished.append((rcpt["id"], "delivered", outcome.code, outcome.message))
                data = item("delivered", delivery_status=status, **common)
                if self.metrics:
                    self.metrics.observe_delivered(now - float(message["created_ts"]))
            elif outcome.kind is Kind.FAILED:
                finished.append((rcpt["id"], "failed", outcome.code, outcome.message))
                data = item("failed", severity="permanent", reason=failure_reason(outcome),
                            delivery_status=status, log_level="error", **common)
                if self.metrics:
                    self.metrics.failed.labels("permanent", outcome.bounce_class or "other").inc()
            else:
                delay = retry.next_delay(self.settings.retry_schedule, attempt_no, outcome.retry_after)
                next_at = now_dt + timedelta(seconds=delay)
                if next_at > rcpt["expires_at"]:
                    finished.append((rcpt["id"], "failed", outcome.code, outcome.message))
                    status["message"] = "Too old"
                    status["description"] = f"Gave up after {attempt_no} attempts; last: {outcome.message}"
                    data = item("failed", severity="permanent", reason="old", delivery_status=status,
                                log_level="error", **common)
                    if self.metrics:
                        self.metrics.failed.labels("permanent", BounceClass.EXPIRED).inc()
                else:
                    rescheduled.append((rcpt["id"], next_at, outcome.code, outcome.message, True))
                    status["retry-seconds"] = int(delay)
                    data = item("failed", severity="temporary", reason="generic", delivery_status=status,
                                log_level="warn", **common)
                    if self.metrics:
                        self.metrics.failed.labels("temporary", outcome.bounce_class or "other").inc()
            new_events.append(NewEvent(message["account_id"], message["domain_id"], message["id"], data))
        with self.db.transaction() as conn:
            for message_pk, signature in signatures.items():
                store.save_dkim_signature(conn, message_pk, signature)
            if finished:
                store.finish(conn, finished)
            if rescheduled:
                store.reschedule(conn, rescheduled)
            self.events.record(conn, new_events)
            if self.suppressions is not None:
                hard = [(d.message, r["address"], o) for d, r, o in results if o.recipient_class]
                if hard:
                    self.suppressions.record_failures(conn, hard)
        return new_events


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


# Mailgun's codes for sends to suppressed addresses (605 previously bounced, 607 complained).
SUPPRESSION_CODES = {"suppress-bounce": 605, "suppress-unsubscribe": 606, "suppress-complaint": 607}


def suppressed(reason: str) -> Outcome:
    descriptions = {"suppress-bounce": "Not delivering to previously bounced address",
                    "suppress-unsubscribe": "Not delivering to unsubscribed address",
                    "suppress-complaint": "Not delivering to a user who marked your messages as spam"}
    text = descriptions.get(reason, "Not delivering to suppressed address")
    return Outcome(Kind.FAILED, SUPPRESSION_CODES.get(reason, 605), text, description=text,
                   extra={"reason": reason})


def dns_outcome(ex: Exception) -> Outcome:
    if isinstance(ex, DnsPermanentError):
        return Outcome(Kind.FAILED, 550, str(ex), enhanced_code=ex.enhanced_code,
                       bounce_class=BounceClass.DNS,
                       description=str(ex))
    return Outcome(Kind.RETRY, 451, f"DNS lookup failed: {ex}", enhanced_code="4.4.3",
                   bounce_class=BounceClass.DNS, description="temporary DNS failure")


def _event_message(message: dict) -> dict:
    return {"headers": message["headers"], "tags": message["tags"], "user_variables": message["user_variables"],
            "options": message["options"], "attachments": message["attachments"], "size": message["size"]}
