"""RQ side of bulk validation: each job validates one batch of a bulk job, then enqueues the next.

Postgres holds the truth (which addresses still wait); an RQ job only says "work on bulk job N now", so a
lost one is harmless: Validation.requeue_stalled (the scheduler) enqueues a job without progress again,
and a batch run twice stores its results once.
"""

from __future__ import annotations

import logging

from rq import Queue

from envoi.validation.service import Validation

log = logging.getLogger("envoi.validation")
QUEUE = "envoi-validation"
_service: Validation | None = None


def configure(service: Validation) -> None:
    """Set the service jobs run with (each worker process calls this once before working)."""
    global _service
    _service = service


def run_batch(job_id: int) -> bool:
    """RQ job: one batch of bulk job `job_id`; enqueues the next while addresses remain."""
    if _service is None:
        raise RuntimeError("envoi.validation.jobs.configure() was not called in this worker")
    more = _service.run_batch(job_id)
    if more and _service.enqueue is not None:
        _service.enqueue(job_id)
    return more


def enqueuer(connection, queue_name: str = QUEUE):
    """The `enqueue(job_id)` a Validation service is given: one RQ job per batch on `queue_name`."""
    queue = Queue(queue_name, connection=connection)

    def enqueue(job_id: int) -> None:
        queue.enqueue(run_batch, job_id, job_timeout=600, result_ttl=0, failure_ttl=86400)
    return enqueue
