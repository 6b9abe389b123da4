"""The webhook dispatcher: an asyncio loop that claims due outbox rows in batches, POSTs them
concurrently over keep-alive pools (webhooks.client) and writes the results in batches.

* Claiming: Webhooks.claim leases up to the free room of this process (ENVOI_WEBHOOK_INFLIGHT minus
  what it holds) in one transaction, fairly (per-endpoint and per-account caps over all processes,
  round-robin across accounts: store.claim). Every claimed row is sent at once, so no tenant's rows
  wait in memory behind another's; a slow or dead endpoint holds at most its cap of slots, each for
  at most ENVOI_WEBHOOK_TIMEOUT, and the rest of its backlog waits in Postgres, not here.
* Results: each attempt's outcome (store.record_results: attempts row, then delivered / rejected on
  406 and 410 / retry with the backoff schedule / failed after ENVOI_WEBHOOK_RETRY_FOR) is written with
  the others waiting and the endpoints' health, in one statement: by the next claim, in its transaction
  (up to 20 a second while rows keep coming), or by the writer once one has waited FLUSH_SECONDS.
* Leasing ahead: a pair (account, endpoint) alone on its endpoint and in its account that answered fast
  since the last claim also gets up to AHEAD x its endpoint cap of its next rows leased ahead
  (store.claim's `ahead`); each starts as a request of the same pair ends, so a fast endpoint's slots do
  not idle until the next claim (at 20 claims a second and 32 slots, one endpoint got at most ~640/s
  per process, below a relay's rate). Requests per pair, endpoint and account stay within what the
  claims granted (a queued row takes the slot of the request that ended, or one the next claim gives
  it); queued rows count as in flight for every other claimer, and are handed back on stop. A queued
  row is started only while its lease still holds its request and the result's write (START_MARGIN);
  after that it is left to run out and be claimed again (never sent twice for it).
* Crashes: a row is leased (ENVOI_WEBHOOK_LEASE) until its result is written; a killed process's rows
  are claimed again when their lease runs out. A delivery is sent twice only if the process died
  after its POST and before that batch's commit, so duplicates are bounded by the rows in flight.
* Waking: the events listener's Redis doorbell (read in a thread), a request that ended (its endpoint
  slot is free at once: the claim is told which of its leased rows have ended, results not yet
  written), a written batch that freed room, or the poll interval; at most every MIN_CLAIM_GAP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque

from envoi.infra.metrics import Metrics
from envoi.webhooks import secret_url, ssrf
from envoi.webhooks.client import Client
from envoi.webhooks.service import Webhooks
from envoi.webhooks.stalls import Stalls

log = logging.getLogger("envoi.webhooks.dispatch")
STOP_GRACE = 1.0  # seconds a stopping dispatcher gives requests in flight before handing them back
# Results no claim took wait at most this long to be written on their own. Written every 20 ms, they
# made ~50 transactions a second (a thread hop, round trips, a commit each) of a few rows, whatever the
# rate: beside a relay at 300-600 msg/s, +0.1-0.16 Postgres transactions per message
# (bench/relay_vs_postfix.py --webhooks). An endpoint's slot is free when its request ends
# (store.claim's `finished`), so waiting longer delays only the attempts' record, and a kill -9
# re-sends at most what is unwritten (at least once, as before).
FLUSH_SECONDS = 0.1
FLUSH_BATCH = 500
# A process claims at most 20 times a second, however fast rows finish: each claim has a fixed cost in
# Postgres (the fair ranking), which at a claim per few rows would cost more than the rows.
MIN_CLAIM_GAP = 0.05
SLOW_CLAIM = 0.25  # seconds: a claim this slow is logged (it holds back every dispatcher's next one)
# Leasing ahead: a pair leases ahead only after an answer this fast since the last claim, up to AHEAD times
# its endpoint cap; a queued row is started only while at least ENVOI_WEBHOOK_TIMEOUT + START_MARGIN of its
# lease is left (the request, then its result's write), so leasing ahead needs a lease longer than that.
FAST_ANSWER_MS = 1000
AHEAD = 4
START_MARGIN = 2.0


class Dispatcher:
    def __init__(self, service: Webhooks, metrics: Metrics | None = None, *, inflight: int | None = None,
                 poll: float = 1.0, stats: bool = False):
        self.service = service
        self.metrics = metrics
        self.inflight_max = inflight or service.settings.webhook_inflight
        self.poll = poll
        self.stats = stats  # this process also measures the backlog for the metrics (one process should)
        self.trace = service.settings.webhook_trace  # > 0: log what is slower than this (ENVOI_WEBHOOK_TRACE)
        self.held = 0  # claimed, not yet written
        self.sent = 0  # attempts written by this process
        self._results: list[tuple] = []
        self._waiting_since = 0.0  # monotonic time of the oldest result waiting to be written
        self._writing: list[int] = []  # ids of the results being written now
        self._outcomes: dict[str, int] = {}  # attempts by outcome not yet added to the metrics
        self._health: dict[tuple[int, str], list] = {}
        self._wake: asyncio.Event | None = None
        self._flushed: asyncio.Event | None = None
        self._targets: dict[bytes, str] = {}
        self._sending: dict[asyncio.Task, int] = {}  # request in flight -> its delivery's id
        settings = service.settings
        # seconds after its claim a row leased ahead may still be started (none if the lease is too short)
        self.start_within = settings.webhook_lease - settings.webhook_timeout - START_MARGIN
        self.ahead = AHEAD * settings.webhook_per_endpoint if self.start_within > 0 else 0
        self._running: dict[tuple[int, str], int] = {}  # (account, endpoint) -> its requests in flight
        # (account, endpoint) -> its (row, key, start by: monotonic) leased ahead, oldest first
        self._queues: dict[tuple[int, str], deque] = {}
        self._quick: set[tuple[int, str]] = set()  # pairs with a fast answer since the last claim
        self._http: Client | None = None
        self._tasks: set | None = None
        self._stopping = False

    # one attempt ---------------------------------------------------------------------------------
    def _start(self, row: dict, key: str) -> None:
        task = asyncio.create_task(self._send(self._http, row, key))
        self._tasks.add(task)
        self._sending[task] = row["id"]
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._sending.pop)
        pair = (row["account_id"], row["endpoint"])
        self._running[pair] = self._running.get(pair, 0) + 1

    def _ended(self, pair: tuple[int, str]) -> None:
        """A request of this pair ended: its slot goes to the pair's next row leased ahead, if any."""
        n = self._running[pair] - 1
        if n:
            self._running[pair] = n
        else:
            del self._running[pair]
        queue = self._queues.get(pair)
        while queue and not self._stopping:
            row, key, start_by = queue.popleft()
            if not queue:
                del self._queues[pair]
            if time.monotonic() < start_by:
                self._start(row, key)
                return
            self._let_go(1)

    def _let_go(self, n: int) -> None:
        """Rows leased ahead too long ago to start: their leases run out and they are claimed again."""
        self.held -= n
        if self.metrics is not None:
            self.metrics.webhook_inflight.set(self.held)

    async def _send(self, http: Client, row: dict, key: str) -> None:
        try:
            await self._attempt(http, row, key)
        finally:
            self._ended((row["account_id"], row["endpoint"]))

    async def _attempt(self, http: Client, row: dict, key: str) -> None:
        try:
            target = self._target(row)
            body = self.service.body_of_json(key, row["payload"])
            response = await http.post(target, body)
            if response.error:
                response.error = secret_url.scrub(response.error, target)
        except Exception as ex:  # a row that cannot even be prepared is an attempt that failed, not a crash
            log.exception("webhook %s could not be sent", row["id"])
            response = ssrf.Response(None, "", 0, f"not sent: {type(ex).__name__}")
        outcome, state, next_in = self.service.judge(row, response.status)
        if not self._results:
            self._waiting_since = time.monotonic()
        self._results.append((row["id"], row["domain_id"], row["attempts"] + 1, response.status, response.error,
                              response.latency_ms, response.excerpt, outcome, state, next_in))
        self._wake.set()  # its endpoint slot is free now (store.claim's `finished`): claim again soon
        ok = outcome == "delivered"
        if ok and response.latency_ms < FAST_ANSWER_MS:
            self._quick.add((row["account_id"], row["endpoint"]))
        health = self._health.setdefault((row["account_id"], row["endpoint"]), [0, 0, None])
        health[0 if ok else 1] += 1
        if not ok and outcome != "rejected":
            health[2] = response.error or f"HTTP {response.status}"
        if self.metrics is not None:
            # PERF: the outcome counter is added to per batch of results (_flush), the histogram per attempt.
            self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1
            self.metrics.webhook_seconds.observe(response.latency_ms / 1000)
        if outcome != "delivered":
            log.info("webhook %s to %s: %s (%s)", row["id"], row["url"], outcome, response.status or response.error)

    def _target(self, row: dict) -> str:
        if row["url_sealed"] is None:
            return row["url"]
        sealed = bytes(row["url_sealed"])
        target = self._targets.get(sealed)
        if target is None:
            if len(self._targets) > 10_000:
                self._targets.clear()
            target = self._targets[sealed] = self.service.target(row)
        return target

    # results -------------------------------------------------------------------------------------
    def _write(self, results: list[tuple], health: dict) -> None:
        self.service.record(results, self._health_rows(health))

    @staticmethod
    def _health_rows(health: dict) -> list[tuple]:
        return [(account_id, endpoint, ok, bad, error) for (account_id, endpoint), (ok, bad, error) in health.items()
                if ok or error is not None]

    def _take_results(self) -> tuple[list[tuple], dict]:
        results, health = self._results, self._health
        self._results, self._health = [], {}
        return results, health

    def _keep_results(self, results: list[tuple], health: dict) -> None:
        """A write failed: its results go with the next one; if this process dies first, the leases run
        out and the rows are sent again (duplicates, never a loss)."""
        if results and not self._results:
            self._waiting_since = time.monotonic()
        self._results = results + self._results
        for k, v in health.items():
            mine = self._health.setdefault(k, [0, 0, None])
            mine[0] += v[0]
            mine[1] += v[1]
            mine[2] = mine[2] or v[2]

    async def _flush(self) -> None:
        if not self._results:
            return
        results, health = self._take_results()
        self._writing = [r[0] for r in results]
        started = time.monotonic()
        try:
            await asyncio.to_thread(self._write, results, health)
            if self.trace and (took := time.monotonic() - started) > self.trace:
                log.warning("writing %d webhook results took %.0f ms (held %d)", len(results), took * 1000, self.held)
        except Exception:
            self._writing = []
            log.exception("writing %d webhook results failed", len(results))
            self._keep_results(results, health)
            await asyncio.sleep(1.0)
            return
        self._writing = []
        self._written(results)
        self._wake.set()  # room was freed: claim again soon

    def _written(self, results: list[tuple]) -> None:
        if not results:
            return
        self.held -= len(results)
        self.sent += len(results)
        if self.metrics is not None:
            self.metrics.webhook_inflight.set(self.held)
            outcomes, self._outcomes = self._outcomes, {}
            for outcome, n in outcomes.items():
                self.metrics.webhook_attempts.labels(outcome).inc(n)
        self._flushed.set()

    async def _writer(self, stop: asyncio.Event) -> None:
        """Write the results no claim took within FLUSH_SECONDS (while rows keep coming, the claims,
        up to 20 a second, write them all and this writes nothing)."""
        while not stop.is_set() or self._results:
            await asyncio.sleep(FLUSH_SECONDS / 4)
            if stop.is_set() or time.monotonic() - self._waiting_since >= FLUSH_SECONDS:
                await self._flush()

    # claiming ------------------------------------------------------------------------------------
    async def _claim_round(self, http: Client, tasks: set) -> int:
        room = self.inflight_max - self.held + len(self._results)  # results waiting are written first
        if room <= 0:
            if self.trace:
                log.warning("no room to claim: %d held (%d results waiting, %d being written)", self.held,
                            len(self._results), len(self._writing))
            return 0
        # The results waiting are written in the claim's transaction, before its ranking (one transaction
        # where there were two). Rows whose results the writer is writing meanwhile hold no endpoint
        # slot any more either (store.claim's `finished`).
        results, health = self._take_results()
        queued = self._queued()
        ahead = []
        if self.ahead:
            quick, self._quick = self._quick, set()
            for pair in quick:
                n = self.ahead - len(self._queues.get(pair, ()))
                if n > 0:
                    ahead.append((*pair, n))
        started = time.monotonic()
        try:
            rows, keys = await asyncio.to_thread(self.service.claim, room, self._writing, results,
                                                 self._health_rows(health), queued, ahead)
        except Exception:
            self._keep_results(results, health)
            raise
        self._written(results)
        if (took := time.monotonic() - started) > (min(SLOW_CLAIM, self.trace) if self.trace else SLOW_CLAIM):
            log.warning("claiming %d webhook deliveries took %.0f ms", len(rows), took * 1000)  # the lock waits
        if self.trace and rows:
            self._trace_claim(rows, room, took)
        again = set(queued)
        self.held += sum(1 for row in rows if row["id"] not in again)
        if self.metrics is not None:
            self.metrics.webhook_inflight.set(self.held)
        self._http, self._tasks = http, tasks
        start_by = started + self.start_within  # (the lease began after `started`)
        for row in rows:
            key = keys[row["account_id"]]
            if row["id"] in again:  # a row leased ahead that the ranking gave a slot (its lease renewed) ...
                if self._unqueue(row):  # ... unless a request that ended meanwhile started it
                    self._start(row, key)
            elif row["ahead"]:
                self._queues.setdefault((row["account_id"], row["endpoint"]), deque()).append((row, key, start_by))
            else:
                self._start(row, key)
        return len(rows)

    def _queued(self) -> list[int]:
        """The ids of the rows leased ahead whose leases surely still hold (so no one else has them: the
        claim may hand them to this process again); the others are let go."""
        now, ids = time.monotonic(), []
        for pair in list(self._queues):
            queue = self._queues[pair]
            kept = deque(entry for entry in queue if now < entry[2])
            self._let_go(len(queue) - len(kept))
            if kept:
                self._queues[pair] = kept
                ids.extend(entry[0]["id"] for entry in kept)
            else:
                del self._queues[pair]
        return ids

    def _unqueue(self, row: dict) -> bool:
        """Take a row out of its pair's queue; whether it was there."""
        pair = (row["account_id"], row["endpoint"])
        queue = self._queues.get(pair)
        if queue is None:
            return False
        rest = deque(entry for entry in queue if entry[0]["id"] != row["id"])
        if rest:
            self._queues[pair] = rest
        else:
            del self._queues[pair]
        return len(rest) < len(queue)

    def _trace_claim(self, rows: list[dict], room: int, took: float) -> None:
        now = time.time()
        first = [now - r["created_at"].timestamp() for r in rows if r["attempts"] == 0]
        if first and max(first) > self.trace:
            log.warning("claimed %d of room %d in %.0f ms; first attempts claimed up to %.0f ms after their"
                        " commit (median %.0f); %d held", len(rows), room, took * 1000, max(first) * 1000,
                        sorted(first)[len(first) // 2] * 1000, self.held)

    def _doorbell(self, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        bell = self.service.doorbell
        while not stop.is_set():
            if bell.wait(min(self.poll, 1.0)):
                loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until `stop` is set; then finish what is in flight and write it."""
        self._wake, self._flushed = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        bell_stop = threading.Event()
        if self.service.doorbell is not None:
            threading.Thread(target=self._doorbell, args=(loop, bell_stop), name="webhook-doorbell", daemon=True).start()
        tasks: set = set()
        writer_stop = asyncio.Event()
        settings = self.service.settings
        async with Client(self.service.allow, settings.webhook_timeout, self.inflight_max, self.trace) as http:
            writer = asyncio.create_task(self._writer(writer_stop))
            stats = asyncio.create_task(self._stats(stop)) if self.stats else None
            lag = asyncio.create_task(Stalls(self.trace).probe(stop)) if self.trace else None
            try:
                while not stop.is_set():
                    self._wake.clear()
                    started = time.monotonic()
                    try:
                        await self._claim_round(http, tasks)
                    except Exception:
                        log.exception("claiming webhook deliveries failed")
                        await asyncio.sleep(1.0)
                    # Claim again when woken (a ring, room freed by written results) or at the poll.
                    waker = asyncio.create_task(self._wake.wait())
                    stopper = asyncio.create_task(stop.wait())
                    await asyncio.wait({waker, stopper}, timeout=self.poll, return_when=asyncio.FIRST_COMPLETED)
                    waker.cancel()
                    stopper.cancel()
                    await asyncio.sleep(max(0.0, MIN_CLAIM_GAP - (time.monotonic() - started)))
                if tasks or self._queues:
                    await self._hand_back(tasks)
            finally:
                bell_stop.set()
                writer_stop.set()
                await writer
                for task in (stats, lag):
                    if task is not None:
                        task.cancel()

    async def _hand_back(self, tasks: set) -> None:
        """Stopping (SIGTERM): what answers within STOP_GRACE is written as usual; the rest is cancelled
        and its leases given back at once, so another dispatcher sends it now rather than after the lease
        (a request cancelled after the endpoint got it is sent again: at least once, as after a crash)."""
        self._stopping = True  # a request that ends starts no queued row now
        queued = [entry[0]["id"] for queue in self._queues.values() for entry in queue]
        self._queues.clear()
        _, pending = await asyncio.wait(set(tasks), timeout=STOP_GRACE) if tasks else (set(), set())
        ids = queued + [self._sending[task] for task in pending if task in self._sending]
        if not ids:
            return
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        try:
            await asyncio.to_thread(self.service.release, ids)
        except Exception:  # the leases then run out as after a crash: later, never lost
            log.exception("handing %d webhook deliveries back failed", len(ids))
        self.held -= len(ids)

    async def drain(self, *, settle: float = 0.0) -> int:
        """Claim and send until nothing is due (tests, `--burst`): returns the attempts made. `settle`:
        also wait that long for retries that come due meanwhile."""
        self._wake, self._flushed = asyncio.Event(), asyncio.Event()
        tasks: set = set()
        before = self.sent
        writer_stop = asyncio.Event()
        async with Client(self.service.allow, self.service.settings.webhook_timeout, self.inflight_max) as http:
            writer = asyncio.create_task(self._writer(writer_stop))
            quiet_since = time.monotonic()
            while True:
                claimed = await self._claim_round(http, tasks)
                if claimed:
                    quiet_since = time.monotonic()
                if not claimed and not tasks and not self._results and self.held == 0:
                    if time.monotonic() - quiet_since >= settle:
                        break
                    await asyncio.sleep(0.05)
                    continue
                self._flushed.clear()
                if tasks or self._results:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._flushed.wait(), timeout=self.service.settings.webhook_timeout + 5)
            writer_stop.set()
            await writer
        return self.sent - before

    # metrics -------------------------------------------------------------------------------------
    async def _stats(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.measure)
            except Exception:
                log.exception("measuring the webhook backlog failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=10)

    def measure(self) -> None:
        """Set the backlog gauges: total, per account (backlog and lag), failing endpoints."""
        if self.metrics is None:
            return
        m = self.metrics
        m.webhook_backlog.set(self.service.backlog())
        now = time.time()
        accounts = self.service.backlog_by_account()
        m.webhook_account_backlog.clear()
        m.webhook_account_lag.clear()
        for a in accounts:
            m.webhook_account_backlog.labels(str(a["account_id"])).set(a["due"])
            m.webhook_account_lag.labels(str(a["account_id"])).set(max(0.0, now - a["first_due_at"].timestamp()))
        failing = self.service.failing_endpoints(limit=1000)
        m.webhook_endpoints_failing.set(len(failing))
        m.webhook_endpoint_failing.clear()
        for f in failing[:20]:  # bounded label set: the longest failing
            m.webhook_endpoint_failing.labels(str(f["account_id"]), f["endpoint"]).set(
                max(0.0, now - f["failing_since"].timestamp()))
