"""The relay: takes due recipients from Postgres and delivers them over reused SMTP sessions.

Flow, one module per stage (like Postal's message_dequeuer): `claim` leases due recipients (Postgres
is the queue; Redis only rings a doorbell) with their domains' DKIM keys; `prepare` opens and signs
their messages; this loop groups them into deliveries (one message to the recipients it has at one
domain) and hands each to `destinations`, the ready queue of its destination, where up to N workers
hold SMTP sessions open and send delivery after delivery over them; `record` turns the outcomes into
a plan (finish, reschedule, events) and writes it back in batches, each batch one commit.

At-least-once: a message the remote has (its final "." sent) is re-sent if the relay dies before its
outcome is committed. Those are bounded: a delivery is sent only with one of UNRECORDED_PER_CONNECTION x
ENVOI_RELAY_CONNECTIONS slots, freed when its outcome is committed, so a crash re-sends at most that many.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable

from envoi.accounts.service import Accounts
from envoi.events.service import Events
from envoi.infra.crypto import Sealer
from envoi.infra.db import Database
from envoi.infra.settings import Settings
from envoi.ips.egress import NoEgressAvailable
from envoi.mta.delivery.claim import Claimer
from envoi.mta.delivery.destinations import Delivery, Destinations
from envoi.mta.delivery.mx import MxResolver
from envoi.mta.delivery.outcome import suppressed
from envoi.mta.delivery.prepare import Preparer
from envoi.mta.delivery.record import Deferral, Recorder, Result
from envoi.mta.delivery.session import Egress, connection_failure, verifying_context
from envoi.mta.delivery.shaping import Shaping, ShapingError
from envoi.mta.delivery.sts import MtaSts
from envoi.mta.delivery.sts_fetch import PolicyFetcher
from envoi.mta.delivery.tls_report import TlsResults
from envoi.mta.signing import DkimSigner
from envoi.webhooks.ssrf import Allow

log = logging.getLogger("envoi.relay")
RENEW_SECONDS = 30
GAUGE_SECONDS = 10.0
TLS_RESULTS_SECONDS = 5.0  # how often TLS-RPT counts are added to Postgres
STOP_DRAIN_SECONDS = 1.0  # SIGTERM: deliveries in flight get this long to finish; the rest are handed back
# Deliveries sent and not yet recorded, per connection: one on the wire, one in the next group commit.
# Sending waits only when recording falls behind.
UNRECORDED_PER_CONNECTION = 2


class Relay:
    """The loop that drives the stages: claim (leases, DKIM keys) -> prepare (open, sign) ->
    destinations (ready queues, sessions) -> record (group-committed outcomes)."""

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
        self.wait_for_work = wait_for_work  # blocking doorbell wait, run in a thread
        self.metrics = metrics
        # egress(message, domain, recipients) -> (Egress, how many of them it carries)
        self.choose_egress = egress
        self.inflight = 0
        self.capacity = max(settings.relay_batch * 2, 100)
        # suppressions: blocked(...) before sending (claim), record_failures(...) for hard bounces (record)
        self.claimer = Claimer(db, accounts, sealer, settings.relay_host, suppressions, lease=settings.relay_lease,
                               affinity=getattr(egress, "pinned_elsewhere", None))
        self.renew_seconds = min(RENEW_SECONDS, settings.relay_lease / 4)
        self.preparer = Preparer(sealer, self.claimer.keys, signers=settings.relay_signers, signer=signer,
                                 metrics=metrics)
        self.recorder = Recorder(db, events, settings.retry_schedule, signatures=self.preparer.signatures,
                                 settled=self._settled, flush_delay=settings.relay_flush_delay,
                                 full_at=settings.relay_connections, suppressions=suppressions, metrics=metrics)
        self.unrecorded = asyncio.Semaphore(UNRECORDED_PER_CONNECTION * settings.relay_connections)
        # MTA-STS and TLS-RPT apply to mail routed by MX, not to a smarthost (ENVOI_SMTP_ROUTE).
        self.tls_results = TlsResults(db, metrics) if not settings.smtp_route else None
        self.sts = None
        if settings.mta_sts and self.tls_results is not None:
            fetcher = PolicyFetcher(resolver, verifying_context(settings.tls_ca_file),
                                    allow=Allow.parse(settings.mta_sts_allow), port=settings.mta_sts_port,
                                    timeout=settings.mta_sts_fetch_timeout)
            self.sts = MtaSts(db, resolver, fetcher, self.tls_results, metrics=metrics)
        self.destinations = Destinations(settings, resolver, shaping or Shaping.load(settings.shaping_file),
                                         self.recorder, connections=asyncio.Semaphore(settings.relay_connections),
                                         unrecorded=self.unrecorded, metrics=metrics, sts=self.sts,
                                         tls_results=self.tls_results)
        # For the periodic "relay: ..." log line: where the time goes.
        self.stats = {"claims": 0, "claim_s": 0.0, "claimed": 0}
        self._stopping = asyncio.Event()

    # lifecycle --------------------------------------------------------------------------------
    async def run(self) -> None:
        await asyncio.to_thread(self.claimer.release_own)
        recorder = asyncio.create_task(self.recorder.run())
        keeper = asyncio.create_task(self._housekeeping())
        try:
            await self._claim_loop()
        finally:
            self._stopping.set()
            await self._drain()
            keeper.cancel()
            await self.destinations.stop()
            await asyncio.gather(keeper, return_exceptions=True)
            recorder.cancel()
            await asyncio.gather(recorder, return_exceptions=True)
            await self.recorder.flush()
            # What did not finish in the drain is handed back now, not when its lease runs out.
            if handed := await asyncio.to_thread(self.claimer.hand_back):
                log.warning("relay stopping: %d unfinished deliveries handed back to the queue", handed)
            await self._flush_tls_results()
            self.preparer.close()

    def stop(self) -> None:
        self._stopping.set()

    def reload_shaping(self) -> bool:
        """SIGHUP: read the shaping file again; a file that does not parse leaves the rules as they were."""
        try:
            shaping = Shaping.load(self.settings.shaping_file)
        except ShapingError as ex:
            log.error("shaping rules not reloaded, the previous ones stay: %s", ex)
            return False
        self.destinations.use_shaping(shaping)
        log.warning("shaping rules reloaded: %d rules besides the default", len(shaping.rules))
        return True

    async def _drain(self, timeout: float = STOP_DRAIN_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def _housekeeping(self) -> None:
        """Renew the leases this relay holds and refresh the queue gauges."""
        renewed = gauged = logged = reported = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if now - logged >= 10:
                self._log_stats(now - logged)
                logged = now
            if self.metrics:
                self.metrics.queue_ready.set(self.destinations.ready())
            try:
                if now - renewed >= self.renew_seconds and self.claimer.leased:
                    await asyncio.to_thread(self.claimer.renew, list(self.claimer.leased))
                    renewed = now
                if now - reported >= TLS_RESULTS_SECONDS:
                    reported = now
                    await self._flush_tls_results()
                if self.metrics and now - gauged >= GAUGE_SECONDS:
                    gauged = now
                    depth = await asyncio.to_thread(self.claimer.depth)
                    self.metrics.queue_scheduled.set(depth["scheduled"])
                    self.metrics.queue_due.set(depth["due"])
                    self.metrics.queue_oldest_due.set(depth["oldest_due_seconds"])
            except Exception:
                log.exception("relay housekeeping failed; retrying")

    async def _flush_tls_results(self) -> None:
        if self.tls_results is not None:
            try:
                await asyncio.to_thread(self.tls_results.flush)
            except Exception:  # kept in memory for the next flush
                log.exception("writing TLS-RPT results failed")

    def _log_stats(self, seconds: float) -> None:
        st, self.stats = self.stats, dict.fromkeys(self.stats, 0)
        rt, self.recorder.stats = self.recorder.stats, dict.fromkeys(self.recorder.stats, 0)
        if st["claimed"] or rt["outcomes"]:
            log.info("relay: %.0f outcomes/s; %d claims (%.0f ms avg, %.0f rows avg), %d flushes (%.0f ms avg,"
                     " %.0f outcomes avg); in flight %d, ready %d, destinations %d", rt["outcomes"] / seconds,
                     st["claims"], 1000 * st["claim_s"] / max(st["claims"], 1), st["claimed"] / max(st["claims"], 1),
                     rt["flushes"], 1000 * rt["flush_s"] / max(rt["flushes"], 1),
                     rt["outcomes"] / max(rt["flushes"], 1), self.inflight, self.destinations.ready(),
                     len(self.destinations.by_key))

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
        claim = await asyncio.to_thread(self.claimer.claim, limit)
        rows, messages, blocked = claim.rows, claim.messages, claim.blocked
        self.stats["claims"] += 1
        self.stats["claim_s"] += time.monotonic() - started
        self.stats["claimed"] += len(rows)
        if not rows:
            return 0
        self.inflight += len(rows)
        self.preparer.hold(r["message_pk"] for r in rows)
        keys, recorder = self.claimer.keys, self.recorder
        groups: dict[tuple[int, str], list[dict]] = defaultdict(list)
        for row in rows:
            reason = blocked.get(row["id"])
            if reason is not None:
                # Suppressed: a permanent failure that says why, and nothing is sent.
                message = messages[row["message_pk"]]
                domain = keys(message["domain_id"]).domain
                recorder.result(Delivery(message, domain, [row], Egress(None, "")), row, suppressed(reason))
                continue
            groups[(row["message_pk"], row["rcpt_domain"])].append(row)
        await self.preparer.prepare([messages[pk] for pk in {pk for pk, _ in groups}])
        for (message_pk, rcpt_domain), recipients in groups.items():
            message = messages[message_pk]
            domain = keys(message["domain_id"]).domain
            while recipients:
                try:
                    egress, carried = self.egress_for(message, domain, len(recipients))
                except NoEgressAvailable as ex:
                    # Not this relay's turn to send it (warm-up caps, IPs elsewhere): put it back unattempted.
                    recorder.defer(recipients, ex.retry_after)
                    break
                except Exception as ex:  # never strand a claimed recipient: a failing hook means retry later
                    log.exception("choosing the egress failed")
                    recorder.result_each(Delivery(message, domain, recipients, Egress(None, "")),
                                  connection_failure(f"internal error: {ex}", {}))
                    break
                # An IP near its warm-up cap may carry only some recipients: the rest look for another.
                carried = max(1, min(carried, len(recipients)))
                self.destinations.dispatch(Delivery(message, domain, recipients[:carried], egress), rcpt_domain)
                recipients = recipients[carried:]
        return len(rows)

    def egress_for(self, message: dict, domain: dict, recipients: int = 1) -> tuple[Egress, int]:
        """Which source address sends this message to (the first how many of) `recipients` recipients.
        Decided at delivery time, not at accept."""
        if self.choose_egress is not None:
            return self.choose_egress(message, domain, recipients)
        return Egress(None, self.settings.helo_name), recipients

    def _settled(self, results: list[Result], deferrals: list[Deferral]) -> None:
        """Outcomes committed: free their slots, leases and (when nothing of it is left here) the
        signature of their message."""
        for delivery, _, _ in results:
            if delivery.unrecorded:
                delivery.unrecorded = False
                self.unrecorded.release()
        self.inflight -= len(results) + len(deferrals)
        self.preparer.release([r["message_pk"] for _, r, _ in results] + [r["message_pk"] for r, _ in deferrals])
        self.claimer.done(r["id"] for _, r, _ in results)
        self.claimer.done(r["id"] for r, _ in deferrals)
