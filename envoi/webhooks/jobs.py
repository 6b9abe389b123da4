"""RQ side of webhooks, kept for the queue of versions before the dispatcher (webhooks.dispatch): a job
left queued by them still runs (one attempt, re-checking its row first); and the RQ worker that
`envoi worker` runs, whose other queues (bulk address validation) are the jobs RQ fits."""

from __future__ import annotations

import redis
from rq import Queue, SimpleWorker

from envoi.webhooks.service import Webhooks

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


def worker(service: Webhooks, connection: redis.Redis, also: tuple[str, ...] = ()) -> SimpleWorker:
    """An RQ worker for the queues named in `also` (bulk address validation), then the webhook queue of
    old, that runs jobs in its own process (no fork per job)."""
    configure(service)
    names = (*also, service.queue_name)
    return SimpleWorker([Queue(name, connection=connection) for name in names], connection=connection)
