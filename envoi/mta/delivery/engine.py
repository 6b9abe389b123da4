"""The relay: takes due recipients from Postgres and delivers them over reused SMTP sessions.

Flow: a claimer leases due recipients (Postgres is the queue; Redis only rings a doorbell), groups
them into deliveries (one message to the recipients it has at one domain), and hands each to the
ready queue of its destination. Per destination, up to N workers hold SMTP sessions open and send
delivery after delivery over them. Outcomes are written back in batches, each batch one commit that
updates the schedule and records the events together.

At-least-once: a message the remote has (its final "." sent) is re-sent if the relay dies before its
outcome is committed. Those are bounded: a delivery is sent only with one of UNRECORDED_PER_CONNECTION x
ENVOI_RELAY_CONNECTIONS slots, freed when its outcome is committed, so a crash re-sends at most that many.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from envoi.accounts.service import Accounts
from envoi.events.service import Events, NewEvent, item
from envoi.infra.crypto import Sealer
from envoi.infra.db import Database
from envoi.infra.settings import Settings
from envoi.ips.errors import NoEgressAvailable
from envoi.mta import store
from envoi.mta.bounces import verp
from envoi.mta.delivery import retry
from envoi.mta.delivery.mx import DnsPermanentError, DnsTemporaryError, MxHost, MxResolver
from envoi.mta.delivery.outcome import BounceClass, Kind, Outcome
from envoi.mta.delivery.session import (
    Egress,
    Session,
    SessionError,
    connection_failure,
    is_connection_failure,
)
from envoi.mta.delivery.shaping import RateLimiter, Rule, Shaping
from envoi.mta.signing import DkimSigner

log = logging.getLogger("envoi.relay")
# A lease is renewed while the relay holds the recipient, so a live relay never loses one; a relay
# killed on another host leaves leases that run out after LEASE_SECONDS. A relay restarted on the
# same host releases its own host's leases at once (one relay per host: DESIGN.md).
LEASE_SECONDS = 120
RENEW_SECONDS = 30
IDLE_SECONDS = 5.0
GAUGE_SECONDS = 10.0
# Deliveries sent and not yet recorded, per connection: one on the wire, one in the next group commit.
# Sending waits only when recording falls behind.
UNRECORDED_PER_CONNECTION = 2


@dataclass
class Delivery:
    """One message to the recipients it has at one destination domain."""

    message: dict
    domain: dict
    recipients: list[dict]  # recipient rows
    egress: Egress
    claimed_at: float = field(default_factory=time.monotonic)
    unrecorded: bool = False  # holds a slot of Relay.unrecorded until its outcome is committed


@dataclass
class Destination:
    """A ready queue: deliveries for one (egress address, MX site); workers hold reused sessions."""

    key: tuple[str | None, tuple[str, ...]]  # (egress address, MX site = sorted MX host names)
    mx: list[MxHost] | None  # in preference order; None: settings.smtp_route
    rule: Rule
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    workers: int = 0
    limiter: RateLimiter | None = None

    @property
    def label(self) -> str:
        return ",".join(self.key[1])[:200]


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
        egress: Callable[[dict, dict, int], tuple[Egress, int]] | None = None,
        shaping: Shaping | None = None,
    ):
        self.settings = settings
        self.db = db
        self.accounts = accounts
        self.sealer = sealer
        self.resolver = resolver
        self.signer = signer or DkimSigner()
        # Signing off the event loop: OpenSSL's RSA releases the GIL, so threads sign in parallel with
        # the loop (a process pool cost more in pickling than it saved). None: sign inline.
        self.sign_pool = (ThreadPoolExecutor(settings.relay_signers, thread_name_prefix="dkim")
                          if settings.relay_signers > 0 else None)
        self.wait_for_work = wait_for_work  # blocking doorbell wait, run in a thread
        self.metrics = metrics
        self.events = events
        # suppressions: blocked(account_id, domain_id, addresses) -> {address: reason} before sending,
        # and record_failures(conn, [(message, address, outcome)]) for recipient-class hard bounces.
        self.suppressions = suppressions
        self.choose_egress = egress
        self.shaping = shaping or Shaping.load(settings.shaping_file)
        # ENVOI_SMTP_ROUTE (a smarthost or the dev sink) is one destination that takes everything.
        self.route_rule = replace(self.shaping.default, name="route", max_connections=settings.relay_connections)
        self.owner = settings.relay_host  # lease owner: this host's relay
        self.verp_key = verp.key_from_secret(settings.secret_key)
        self.destinations: dict[tuple, Destination] = {}
        self.paused: dict[tuple, float] = {}  # destination key -> monotonic time it may be tried again
        self.inflight = 0
        self.capacity = max(settings.relay_batch * 2, 100)
        self.connections = asyncio.Semaphore(settings.relay_connections)
        self.unrecorded = asyncio.Semaphore(UNRECORDED_PER_CONNECTION * settings.relay_connections)
        self.results: list[tuple[Delivery, dict, Outcome]] = []
        self.deferrals: list[tuple[dict, float]] = []  # (recipient row, seconds): put back, no attempt counted
        self.leased: set[int] = set()  # recipient ids this relay holds leases on
        # Signatures made here and not yet stored, kept while this relay holds recipients of their
        # message (_holding counts them): a retry, or a recipient claimed later, reuses the signature.
        self.signatures: dict[int, str] = {}
        self._holding: Counter[int] = Counter()
        self._domains: dict[int, tuple[float, dict, bytes, tuple[str, bytes] | None]] = {}
        self._workers: set[asyncio.Task] = set()
        self._tasks: set[asyncio.Task] = set()
        # For the periodic "relay: ..." log line: where the time goes.
        self.stats = {"claims": 0, "claim_s": 0.0, "claimed": 0, "flushes": 0, "flush_s": 0.0, "outcomes": 0}
        self._stopping = asyncio.Event()
        self._flushed = asyncio.Event()  # an outcome waits to be written
        self._full = asyncio.Event()  # one outcome per connection waits: write without delay

    # lifecycle --------------------------------------------------------------------------------
    async def run(self) -> None:
        await asyncio.to_thread(self._release_own_leases)
        flusher = asyncio.create_task(self._flush_loop())
        keeper = asyncio.create_task(self._housekeeping())
        try:
            await self._claim_loop()
        finally:
            self._stopping.set()
            await self._drain()
            for task in list(self._workers) + list(self._tasks) + [keeper]:
                task.cancel()
            await asyncio.gather(*self._workers, *self._tasks, keeper, return_exceptions=True)
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            await self._flush()
            if self.sign_pool is not None:
                self.sign_pool.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        self._stopping.set()

    async def _drain(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def _release_own_leases(self) -> None:
        with self.db.transaction() as conn:
            released = store.release_leases(conn, self.owner)
        if released:
            log.warning("released %d leases left by a previous relay on %s", released, self.owner)

    async def _housekeeping(self) -> None:
        """Renew the leases this relay holds and refresh the queue gauges."""
        renewed = gauged = logged = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if now - logged >= 10:
                self._log_stats(now - logged)
                logged = now
            if self.metrics:
                self.metrics.queue_ready.set(sum(d.queue.qsize() for d in self.destinations.values()))
            try:
                if now - renewed >= RENEW_SECONDS and self.leased:
                    ids = list(self.leased)
                    await asyncio.to_thread(self._renew, ids)
                    renewed = now
                if self.metrics and now - gauged >= GAUGE_SECONDS:
                    gauged = now
                    depth = await asyncio.to_thread(self._depth)
                    self.metrics.queue_scheduled.set(depth["scheduled"])
                    self.metrics.queue_due.set(depth["due"])
            except Exception:
                log.exception("relay housekeeping failed; retrying")

    def _log_stats(self, seconds: float) -> None:
        st, self.stats = self.stats, dict.fromkeys(self.stats, 0)
        if st["claimed"] or st["outcomes"]:
            log.info("relay: %.0f outcomes/s; %d claims (%.0f ms avg, %.0f rows avg), %d flushes (%.0f ms avg,"
                     " %.0f outcomes avg); in flight %d, ready %d, destinations %d", st["outcomes"] / seconds,
                     st["claims"], 1000 * st["claim_s"] / max(st["claims"], 1), st["claimed"] / max(st["claims"], 1),
                     st["flushes"], 1000 * st["flush_s"] / max(st["flushes"], 1),
                     st["outcomes"] / max(st["flushes"], 1), self.inflight,
                     sum(d.queue.qsize() for d in self.destinations.values()), len(self.destinations))

    def _renew(self, ids: list[int]) -> None:
        with self.db.transaction() as conn:
            store.renew_leases(conn, ids, self.owner, LEASE_SECONDS)

    def _depth(self) -> dict:
        with self.db.transaction() as conn:
            return store.queue_depth(conn)

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
            elif claimed:
                # A trickle: wait a moment so the next claim takes several commits' recipients at
                # once (claims of 5 rows at every doorbell cost ~0.25 ms of CPU per message).
                await asyncio.sleep(self.settings.relay_claim_interval)
            else:
                await self._idle_wait()

    async def _idle_wait(self) -> None:
        if self.wait_for_work is None:
            await asyncio.sleep(0.5)
            return
        # The doorbell only shortens the wait; the poll every second is what guarantees progress
        # (it is the sweeper: Postgres is the queue, so a Redis FLUSHALL loses nothing).
        waiter = asyncio.create_task(asyncio.to_thread(self.wait_for_work, 1.0))
        stopper = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()

    async def _claim(self, limit: int) -> int:
        started = time.monotonic()
        rows, messages, blocked = await asyncio.to_thread(self._claim_sync, limit)
        self.stats["claims"] += 1
        self.stats["claim_s"] += time.monotonic() - started
        self.stats["claimed"] += len(rows)
        if not rows:
            return 0
        self.inflight += len(rows)
        self.leased.update(r["id"] for r in rows)
        self._holding.update(r["message_pk"] for r in rows)
        groups: dict[tuple[int, str], list[dict]] = defaultdict(list)
        for row in rows:
            reason = blocked.get(row["id"])
            if reason is not None:
                # Suppressed: a permanent failure that says why, and nothing is sent.
                message = messages[row["message_pk"]]
                domain = self._domain(message["domain_id"])[0]
                self._result(Delivery(message, domain, [row], Egress(None, "")), row, suppressed(reason))
                continue
            groups[(row["message_pk"], row["rcpt_domain"])].append(row)
        await self._open_and_sign([messages[pk] for pk in {pk for pk, _ in groups}])
        for (message_pk, rcpt_domain), recipients in groups.items():
            message = messages[message_pk]
            domain = self._domain(message["domain_id"])[0]
            while recipients:
                try:
                    egress, carried = self.egress_for(message, domain, len(recipients))
                except NoEgressAvailable as ex:
                    # Not this relay's turn to send it (warm-up caps, IPs elsewhere): put it back unattempted.
                    for rcpt in recipients:
                        self._defer(rcpt, ex.retry_after)
                    break
                except Exception as ex:  # never strand a claimed recipient: a failing hook means retry later
                    log.exception("choosing the egress failed")
                    self._fail_delivery(Delivery(message, domain, recipients, Egress(None, "")),
                                        connection_failure(f"internal error: {ex}", {}))
                    break
                # An IP near its warm-up cap may carry only some recipients: the rest look for another.
                carried = max(1, min(carried, len(recipients)))
                self._dispatch(Delivery(message, domain, recipients[:carried], egress), rcpt_domain)
                recipients = recipients[carried:]
        return len(rows)

    def _claim_sync(self, limit: int) -> tuple[list[dict], dict[int, dict], dict[int, str]]:
        blocked: dict[int, str] = {}
        with self.db.transaction() as conn:
            rows = store.claim_due(conn, limit, LEASE_SECONDS, self.owner)
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
            stale = {d for d, (at, *_) in self._domains.items() if time.monotonic() - at > 60}
            for m in messages.values():
                if m["domain_id"] not in self._domains or m["domain_id"] in stale:
                    missing.add(m["domain_id"])
        for domain_id in missing:
            domain = self.accounts.get_domain_by_id(domain_id)
            with self.db.transaction() as conn:
                ed = store.domain_ed25519(conn, domain_id)
            ed25519 = None
            if ed is not None:
                ed25519 = (ed["selector"], self.sealer.open(ed["key"], ed25519_context(domain["name"])))
            self._domains[domain_id] = (time.monotonic(), domain, self.accounts.dkim_private_key(domain), ed25519)
        return rows, messages, blocked

    def _domain(self, domain_id: int) -> tuple[dict, bytes, tuple[str, bytes] | None]:
        _, domain, pem, ed25519 = self._domains[domain_id]
        return domain, pem, ed25519

    def egress_for(self, message: dict, domain: dict, recipients: int = 1) -> tuple[Egress, int]:
        """Which source address sends this message to (the first how many of) `recipients` recipients.
        Decided at delivery time, not at accept."""
        if self.choose_egress is not None:
            return self.choose_egress(message, domain, recipients)
        return Egress(None, self.settings.helo_name), recipients

    # dispatch ---------------------------------------------------------------------------------
    def _dispatch(self, delivery: Delivery, rcpt_domain: str) -> None:
        options = delivery.message["options"] or {}
        if options.get("testmode"):
            # Test mode: accepted and recorded as delivered with Mailgun's code 650, never sent.
            outcome = Outcome(Kind.DELIVERED, 650, "Test mode", description="test mode")
            for rcpt in delivery.recipients:
                self._result(delivery, rcpt, outcome)
            return
        if self.settings.smtp_route:
            host, port = self.settings.smtp_route
            self._enqueue(delivery, (f"{host}:{port}",), None)
            return
        task = asyncio.create_task(self._route(delivery, rcpt_domain))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _route(self, delivery: Delivery, rcpt_domain: str) -> None:
        """Resolve the MX set (cached by TTL) and queue the delivery on that MX site's destination."""
        try:
            hosts = await self.resolver.mx(rcpt_domain)
        except (DnsTemporaryError, DnsPermanentError) as ex:
            self._fail_delivery(delivery, dns_outcome(ex))
            return
        except Exception as ex:  # never lose a claimed recipient to a bug: retry it
            log.exception("MX lookup crashed")
            self._fail_delivery(delivery, dns_outcome(DnsTemporaryError(str(ex))))
            return
        self._enqueue(delivery, tuple(sorted({h.host for h in hosts})), hosts)

    def _enqueue(self, delivery: Delivery, site: tuple[str, ...], mx: list[MxHost] | None) -> None:
        key = (delivery.egress.address, site)
        until = self.paused.get(key)
        if until is not None:
            if until > time.monotonic():
                # The destination asked us to back off (421): put it back unattempted until then.
                for rcpt in delivery.recipients:
                    self._defer(rcpt, until - time.monotonic())
                return
            del self.paused[key]
        dest = self.destinations.get(key)
        if dest is None:
            rule = self.shaping.for_site(site) if mx is not None else self.route_rule
            limiter = RateLimiter(rule.messages_per_minute) if rule.messages_per_minute else None
            dest = self.destinations[key] = Destination(key, mx, rule, limiter=limiter)
        dest.queue.put_nowait(delivery)
        if dest.workers < dest.rule.max_connections and dest.queue.qsize() > dest.workers - 1:
            dest.workers += 1
            task = asyncio.create_task(self._worker(dest))
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    def _pause(self, dest: Destination, outcome: Outcome) -> None:
        """421 or "try again in N seconds": close, stop sending to this destination for a while."""
        seconds = outcome.retry_after or dest.rule.pause_seconds
        self.paused[dest.key] = time.monotonic() + seconds
        log.info("destination %s paused for %.0fs: %s %s", dest.label, seconds, outcome.code, outcome.message)
        while not dest.queue.empty():
            for rcpt in dest.queue.get_nowait().recipients:
                self._defer(rcpt, seconds)

    async def _worker(self, dest: Destination) -> None:
        session: Session | None = None
        try:
            async with self.connections:
                while True:
                    try:  # PERF: under load the queue is never empty; wait_for costs a task per call
                        delivery = dest.queue.get_nowait()
                    except asyncio.QueueEmpty:
                        try:
                            delivery = await asyncio.wait_for(dest.queue.get(), IDLE_SECONDS)
                        except TimeoutError:
                            return
                    until = self.paused.get(dest.key)
                    if until is not None and until > time.monotonic():
                        for rcpt in delivery.recipients:
                            self._defer(rcpt, until - time.monotonic())
                        continue
                    if dest.limiter is not None and (wait := dest.limiter.delay()):
                        await asyncio.sleep(wait)
                    if session is not None and session.messages_sent >= dest.rule.messages_per_connection:
                        await self._close(dest, session)
                        session = None
                    if session is None or not session.usable:
                        if session is not None:
                            await self._close(dest, session)
                        try:
                            session = await self._connect(dest, delivery)
                        except SessionError as ex:
                            session = None
                            self._fail_delivery(delivery, ex.outcome)
                            if not is_connection_failure(ex.outcome) and (
                                    ex.outcome.code == 421 or ex.outcome.retry_after):
                                self._pause(dest, ex.outcome)
                            else:
                                # The destination is unreachable: what is queued for it shares the fate.
                                self._fail_queued(dest, ex.outcome)
                            continue
                        except (DnsTemporaryError, DnsPermanentError) as ex:
                            self._fail_delivery(delivery, dns_outcome(ex))
                            self._fail_queued(dest, dns_outcome(ex))
                            continue
                    if not delivery.unrecorded:
                        await self.unrecorded.acquire()
                        delivery.unrecorded = True
                    try:
                        outcomes = await self._send(session, delivery)
                    except SessionError as ex:  # the session broke mid-transaction: only this one retries
                        await self._close(dest, session)
                        session = None
                        self._fail_delivery(delivery, ex.outcome)
                        continue
                    except Exception as ex:  # a bug or a message that cannot be sent; Session.send left
                        log.exception("delivery crashed")  # the session clean (reset or closed)
                        for rcpt in delivery.recipients:
                            self._result(delivery, rcpt, internal_error(ex, rcpt["attempts"] + 1, session.host))
                        continue
                    throttled = next((o for o in outcomes if o.code == 421 and not is_connection_failure(o)), None)
                    if throttled is not None:
                        await self._close(dest, session)
                        session = None
                        self._pause(dest, throttled)
        finally:
            dest.workers -= 1
            if session is not None:
                await self._close(dest, session)
            if dest.workers == 0 and dest.queue.empty():
                self.destinations.pop(dest.key, None)

    async def _close(self, dest: Destination, session: Session) -> None:
        if session.counted:
            session.counted = False
            if self.metrics:
                self.metrics.connections.labels(dest.label).dec()
        await session.close()

    def _fail_queued(self, dest: Destination, outcome: Outcome) -> None:
        while not dest.queue.empty():
            self._fail_delivery(dest.queue.get_nowait(), outcome)

    def _fail_delivery(self, delivery: Delivery, outcome: Outcome) -> None:
        for rcpt in delivery.recipients:
            self._result(delivery, rcpt, outcome)

    async def _connect(self, dest: Destination, delivery: Delivery) -> Session:
        """Try the MX hosts in preference order (and each one's addresses); the next on failure."""
        if dest.mx is None:
            host, port = self.settings.smtp_route
            targets = [(host, [host], port)]
        else:
            targets = [(mx.host, None, self.settings.remote_smtp_port) for mx in dest.mx]
        last: SessionError | None = None
        for mx_host, addresses, port in targets:
            if addresses is None:
                try:
                    addresses = await self.resolver.addresses(mx_host)
                except (DnsTemporaryError, DnsPermanentError) as ex:
                    last = SessionError(dns_outcome(DnsTemporaryError(str(ex))))
                    continue
            for address in addresses:
                session = Session(mx_host, address, port, delivery.egress, self.settings.smtp_timeout,
                                  ca_file=self.settings.tls_ca_file)
                try:
                    await session.open()
                except SessionError as ex:
                    last = ex
                    if ex.outcome.kind is Kind.FAILED and ex.outcome.code >= 500 and ex.outcome.code != 554:
                        raise
                    continue
                session.counted = True
                if self.metrics:
                    self.metrics.connections.labels(dest.label).inc()
                return session
        if last is None:
            raise DnsTemporaryError(f"no address found for any MX of {dest.label}")
        raise last

    async def _send(self, session: Session, delivery: Delivery) -> list[Outcome]:
        message = delivery.message
        options = message["options"] or {}
        require_tls = bool(options.get("require_tls", delivery.domain.get("require_tls")))
        skip = options.get("skip_verification", delivery.domain.get("skip_verification"))
        refusal = session.policy_refusal(require_tls, not skip)
        if refusal is not None:
            self._fail_delivery(delivery, refusal)
            return [refusal]
        data = self._signed(message)
        addresses = [r["address"] for r in delivery.recipients]
        outcomes = await session.send(self._mail_from(delivery), addresses, data)
        for rcpt in delivery.recipients:
            self._result(delivery, rcpt, outcomes[rcpt["address"]])
        return list(outcomes.values())

    def _mail_from(self, delivery: Delivery) -> str:
        """The envelope sender: a VERP return path naming the message (and the recipient if alone)."""
        message = delivery.message
        if self.verp_key is None or not message["mail_from"]:
            return message["mail_from"]
        domain = self.settings.bounce_domain or delivery.domain["name"]
        return verp.envelope_sender(domain, message["id"], [r["id"] for r in delivery.recipients], self.verp_key)

    async def _open_and_sign(self, messages: list[dict]) -> None:
        """Open and sign the claimed messages off the event loop: a thread hop per claim and signer
        rather than one per message (those hops were ~8% of the relay's CPU). OpenSSL's RSA releases
        the GIL, so the signers run beside the loop. A message that cannot be prepared carries the
        error to its delivery, which fails (and is retried) like any other crash."""
        todo = [m for m in messages if "data" not in m and not (m["options"] or {}).get("testmode")]
        if not todo:
            return
        if self.sign_pool is None:
            signed = self._open_and_sign_sync(todo)
        else:
            loop = asyncio.get_running_loop()
            n = self.settings.relay_signers
            parts = await asyncio.gather(*(loop.run_in_executor(self.sign_pool, self._open_and_sign_sync, todo[i::n])
                                           for i in range(min(n, len(todo)))))
            signed = {pk: sig for part in parts for pk, sig in part.items()}
        # Signed once per message: kept with the outcome (for retries) and for deliveries in flight.
        self.signatures.update(signed)

    def _open_and_sign_sync(self, messages: list[dict]) -> dict[int, str]:
        signed = {}
        for message in messages:
            try:
                body = self.sealer.open(message["body"], message["storage_key"].encode())
                message["body"] = None  # the sealed copy is not needed any more
                if (message["options"] or {}).get("dkim") is False:
                    message["data"] = body
                    continue
                signature = message["dkim_signature"] or self.signatures.get(message["id"])
                if signature is None:
                    signature = signed[message["id"]] = self._sign(body, self._domain(message["domain_id"]))
                    message["dkim_signature"] = signature
                message["data"] = signature.encode() + body
            except Exception as ex:
                message["data"] = ex
        return signed

    def _signed(self, message: dict) -> bytes:
        data = message["data"]
        if isinstance(data, Exception):
            raise data
        return data

    def _sign(self, body: bytes, domain_keys: tuple[dict, bytes, tuple[str, bytes] | None]) -> str:
        domain, pem, ed25519 = domain_keys
        started = time.perf_counter()
        signature = self.signer.sign(body, domain=domain["name"], selector=domain["dkim_selector"],
                                     private_key_pem=pem, ed25519=ed25519)
        if self.metrics:
            self.metrics.dkim_seconds.observe(time.perf_counter() - started)
        return signature.decode()

    # outcomes ---------------------------------------------------------------------------------
    def _result(self, delivery: Delivery, rcpt: dict, outcome: Outcome) -> None:
        self.results.append((delivery, rcpt, outcome))
        self._outcome_waits()

    def _defer(self, rcpt: dict, seconds: float) -> None:
        """Put a recipient back for later without an attempt or an event (throttled, no egress)."""
        self.deferrals.append((rcpt, max(seconds, 1.0)))
        self._outcome_waits()

    def _outcome_waits(self) -> None:
        self._flushed.set()
        if len(self.results) + len(self.deferrals) >= self.settings.relay_connections:
            self._full.set()

    async def _flush_loop(self) -> None:
        # Group commit with a floor between writes: while outcomes keep coming, a write starts at most
        # every ENVOI_RELAY_FLUSH_DELAY (sooner once one outcome per connection waits), and what came
        # in meanwhile goes with it; an outcome after a quiet spell is written at once. A write costs
        # ~1 ms of the relay's CPU and ~0.6 ms of Postgres's whatever its size, an outcome ~0.1 ms in
        # all: writing each outcome as soon as the flusher was free made writes of 1-3 outcomes on a
        # quiet machine (fast commits) and doubled the relay's CPU per message. Senders never wait on
        # the delay for a slot: with no write under way, all slots taken means at least one outcome
        # per connection waits. A message the remote accepted is re-sent if the relay dies before its
        # outcome is committed: at most the unrecorded slots (UNRECORDED_PER_CONNECTION x
        # connections), whatever the delay.
        loop = asyncio.get_running_loop()
        last_write = float("-inf")
        while True:
            await self._flushed.wait()
            self._flushed.clear()
            self._full.clear()
            wait = last_write + self.settings.relay_flush_delay - loop.time()
            if wait > 0 and len(self.results) + len(self.deferrals) < self.settings.relay_connections:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), wait)
                self._flushed.clear()
            last_write = loop.time()
            await self._flush()

    async def _flush(self) -> None:
        """Write the waiting outcomes and deferrals in one transaction."""
        if not self.results and not self.deferrals:
            return
        results, self.results = self.results, []
        deferrals, self.deferrals = self.deferrals, []
        held = [r["message_pk"] for _, r, _ in results] + [r["message_pk"] for r, _ in deferrals]
        signatures = {pk: self.signatures[pk] for pk in set(held) if pk in self.signatures}
        started = time.monotonic()
        for attempt in range(10):
            try:
                events = await asyncio.to_thread(self._record, results, signatures, deferrals)
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
            events = []
        for delivery, _, _ in results:
            if delivery.unrecorded:
                delivery.unrecorded = False
                self.unrecorded.release()
        self.inflight -= len(results) + len(deferrals)
        for pk in held:
            self._holding[pk] -= 1
            if self._holding[pk] <= 0:  # nothing of this message left here: its signature is not needed
                del self._holding[pk]
                self.signatures.pop(pk, None)
        self.leased.difference_update(r["id"] for _, r, _ in results)
        self.leased.difference_update(r["id"] for r, _ in deferrals)
        if events:
            self.events.committed(events)

    def _record(self, results: list[tuple[Delivery, dict, Outcome]], signatures: dict[int, str],
                deferrals: list[tuple[dict, float]] = ()) -> list[NewEvent]:
        now = time.time()
        now_dt = datetime.fromtimestamp(now, UTC)
        finished, rescheduled, new_events = [], [], []
        for rcpt, seconds in deferrals:
            rescheduled.append((rcpt["id"], now_dt + timedelta(seconds=seconds), None, None, False))
        for delivery, rcpt, outcome in results:
            message = delivery.message
            attempt_no = rcpt["attempts"] + 1
            status = delivery_status(outcome, attempt_no)
            common = {"message": _event_message(message), "recipient": rcpt["address"], "ts": now,
                      "envelope": {"sender": message["mail_from"], "targets": rcpt["address"],
                                   "transport": "smtp", "sending-ip": outcome.sending_ip},
                      "method": message["method"]}  # known here: spares Events.record a lookup
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
        finished_ids = {rid for rid, *_ in finished}
        pending = {d.message["id"] for d, r, _ in results if r["id"] not in finished_ids}
        pending.update(r["message_pk"] for r, _ in deferrals)
        pending.update(d.message["id"] for d, _, _ in results if d.message.get("recipient_count", 2) > 1)
        with self.db.pipelined() as conn:
            # Only messages that will be sent again need their signature kept.
            store.save_dkim_signatures(conn, {pk: sig for pk, sig in signatures.items() if pk in pending})
            store.finish(conn, finished)
            store.reschedule(conn, rescheduled)
            if new_events:
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


#: A delivery that keeps raising inside the relay fails at this attempt instead of retrying for days.
INTERNAL_ERROR_ATTEMPTS = 3


def internal_error(ex: Exception, attempt_no: int, mx_host: str = "") -> Outcome:
    """The outcome of an exception while sending one delivery: retried like a deferral (it may have
    been passing), then failed for good, so one poison message never cycles until it expires."""
    text = f"internal error: {type(ex).__name__}: {ex}"[:500]
    if attempt_no >= INTERNAL_ERROR_ATTEMPTS:
        return Outcome(Kind.FAILED, 554, text, enhanced_code="5.3.0", bounce_class=BounceClass.OTHER,
                       mx_host=mx_host, extra={"reason": "generic"},
                       description=f"the relay could not send this message (attempt {attempt_no}); not retried")
    return Outcome(Kind.RETRY, 451, text, enhanced_code="4.3.0", bounce_class=BounceClass.OTHER, mx_host=mx_host,
                   description=f"the relay could not send this message; retried (at most {INTERNAL_ERROR_ATTEMPTS}"
                               " attempts)")


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


def ed25519_context(domain_name: str) -> bytes:
    """Sealing context of a domain's ed25519 DKIM key (bound to the domain like the RSA one)."""
    return b"dkim-ed25519:" + domain_name.encode()
