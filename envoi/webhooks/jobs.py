"""RQ side of webhooks, kept for the queue of versions before the dispatcher (webhooks.dispatch): a job
left queued by them still runs (one attempt, re-checking its row first); and the RQ worker that
`envoi worker` runs, whose other queues (bulk address validation) are the jobs RQ fits."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import redis
from rq import Queue, SimpleWorker
from rq.worker import WorkerStatus

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


class HandBack(BaseException):
    """Raised in a job that did not finish within the grace after SIGTERM (a BaseException: jobs don't
    catch it)."""


class HandingBackWorker(SimpleWorker):
    """A SimpleWorker whose SIGTERM stops within ~`grace` s: a job still running then is interrupted and
    put back on its queue (the next worker runs it again; jobs here are idempotent), instead of RQ's warm
    shutdown waiting for it however long it takes. `on_stop` runs at the first SIGTERM (the group's parent
    forwards it to its children there)."""

    grace = 1.0
    on_stop: Callable[[], None] | None = None
    _handing_back = False
    _timer: threading.Timer | None = None

    def subscribe(self) -> None:
        # RQ's command channel, as RQ subscribes to it but polled every 0.5 s instead of 60: stopping
        # joins this thread, which otherwise held an idle worker's exit for up to a minute.
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(sleep_time=0.5, daemon=True,
                                                       exception_handler=self._pubsub_exception_handler)

    def handle_warm_shutdown_request(self) -> None:
        super().handle_warm_shutdown_request()
        if self.on_stop is not None:
            self.on_stop()
        if self.get_state() == WorkerStatus.BUSY:
            # SIGALRM is RQ's job timeout; SIGUSR1, sent to this (main) thread, interrupts the job.
            signal.signal(signal.SIGUSR1, self._interrupt)
            main = threading.main_thread().ident
            self._timer = threading.Timer(self.grace, signal.pthread_kill, (main, signal.SIGUSR1))
            self._timer.daemon = True
            self._timer.start()

    def _interrupt(self, signum, frame) -> None:
        if self.get_state() == WorkerStatus.BUSY and not self._handing_back:
            self._handing_back = True
            raise HandBack("SIGTERM: job handed back")

    def request_force_stop(self, signum, frame) -> None:
        # A second SIGTERM (RQ's cold shutdown: SystemExit in the job) hands the job back too; RQ ignores
        # one within 1 s of the first, and returns.
        before, self._handing_back = self._handing_back, self.get_state() == WorkerStatus.BUSY
        super().request_force_stop(signum, frame)
        self._handing_back = before

    def perform_job(self, job, queue, execution) -> bool:
        done = super().perform_job(job, queue, execution)
        if self._timer is not None:
            self._timer.cancel()
        if self._handing_back and not done:  # RQ recorded it as failed: back to the front of its queue
            job.failed_job_registry.requeue(job, at_front=True)
            self.log.warning("Worker %s: job %s handed back to %s", self.name, job.id, queue.name)
        return done


def worker(service: Webhooks, connection: redis.Redis, also: tuple[str, ...] = ()) -> HandingBackWorker:
    """An RQ worker for the queues named in `also` (bulk address validation), then the webhook queue of
    old, that runs jobs in its own process (no fork per job) and hands a running job back on SIGTERM."""
    configure(service)
    names = (*also, service.queue_name)
    return HandingBackWorker([Queue(name, connection=connection) for name in names], connection=connection)
