"""RQ side of webhooks: the dispatcher (Postgres outbox -> RQ jobs) and the job itself.

Fairness: the dispatcher never lets more than ENVOI_WEBHOOK_PER_ENDPOINT deliveries to one endpoint
host, nor more than ENVOI_WEBHOOK_PER_ACCOUNT deliveries of one account, be in flight (queued in RQ or
running), and it hands out due rows round-robin across accounts. So the queue never holds a backlog
of one tenant in front of others: a slow or dead endpoint occupies at most that many worker slots,
for at most ENVOI_WEBHOOK_TIMEOUT each, and every other tenant's webhooks keep flowing through the
remaining workers (run more worker processes than the per-account cap: `envoi worker --processes N`).
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from rq import Queue, SimpleWorker

from envoi.webhooks.service import Webhooks

log = logging.getLogger("envoi.webhooks")
_service: Webhooks | None = None


def configure(service: Webhooks) -> None:
    """Set the service jobs run with (each worker process calls this once before working)."""
    global _service
    _service = service


def deliver(delivery_id: int) -> str:
    """RQ job: one attempt for one outbox row (idempotent: a finished or running row is skipped)."""
    if _service is None:
        raise RuntimeError("envoi.webhooks.jobs.configure() was not called in this worker")
    return _service.deliver(delivery_id)


def worker_connection(redis_url: str) -> redis.Redis:
    # No socket timeout: RQ blocks on BLPOP for longer than the API client's 5 s.
    return redis.Redis.from_url(redis_url)


class Dispatcher:
    """Leases due outbox rows and enqueues a job for each; also the sweeper for lost jobs."""

    def __init__(self, service: Webhooks, connection: redis.Redis):
        self.service = service
        self.queue = Queue(service.queue_name, connection=connection)
        self._stop = threading.Event()

    def run_once(self) -> int:
        ids = self.service.claim_due()
        timeout = int(self.service.settings.webhook_timeout * 2 + 30)
        for n, delivery_id in enumerate(ids):
            try:
                self.queue.enqueue(deliver, delivery_id, job_timeout=timeout, result_ttl=0, failure_ttl=86400)
            except redis.RedisError as ex:
                # The leases run out and the rows come back: nothing is lost, only delayed.
                log.warning("enqueueing %d webhook deliveries failed: %s", len(ids) - n, ex)
                return n
        return len(ids)

    def run(self, poll: float = 1.0, on_backlog=None) -> None:
        """Dispatch until stopped; `on_backlog(n)` gets the count of due rows about every 10 s."""
        measured = 0.0
        while not self._stop.is_set():
            try:
                if on_backlog is not None and time.monotonic() - measured > 10:
                    measured = time.monotonic()
                    on_backlog(self.service.backlog())
                if self.run_once():
                    continue
            except Exception:
                log.exception("webhook dispatcher round failed")
                self._stop.wait(1.0)
            if self.service.doorbell is not None:
                self.service.doorbell.wait(poll)  # returns at once on a ring; the poll guarantees progress
            else:
                self._stop.wait(poll)

    def stop(self) -> None:
        self._stop.set()


def worker(service: Webhooks, connection: redis.Redis, also: tuple[str, ...] = ()) -> SimpleWorker:
    """An RQ worker for the webhook queue, then the queues named in `also` (bulk address validation),
    that runs jobs in its own process (no fork per job)."""
    configure(service)
    names = (service.queue_name, *also)
    return SimpleWorker([Queue(name, connection=connection) for name in names], connection=connection)
