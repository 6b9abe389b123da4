"""The SMTP server's commit stage: one thread that commits what the sessions of a process submit.

The event loop composes each message (pure CPU) and hands it over; the stage takes everything
waiting, prepares it (the sending domain, renderers, rows) and commits it in one transaction
through Intake.commit, then resolves the sessions' futures with one call into the loop. A batch
costs two thread hand-offs whatever its size, where one worker thread per message cost four per
message: on a busy machine each hand-off is a wait for a core, and the sessions are waiting.
While a batch is being written the next one gathers, so the batch grows with the load; under load
(the last batch had company) the stage also waits `delay` seconds before taking it, as the API's group
commit does: a batch costs ~1 ms of this process's CPU and ~0.4 ms of Postgres's whatever its size
(bench/intake_write_cpu.py), and the sessions, one message at a time each, need a few milliseconds
between two messages, so without the wait a batch held half of them. A lone session never waits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from envoi.mta.intake import Accepted

log = logging.getLogger(__name__)


@dataclass
class _Submitted:
    args: tuple
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    accepted: Accepted | None = None
    outcome: Any = field(default=None)  # the Message-ID, or the exception that refused the message


class CommitStage:
    def __init__(self, prepare: Callable[..., Accepted], commit: Callable[[list[Accepted]], list[BaseException | None]],
                 max_batch: int = 64, delay: float = 0.0, name: str = "envoi-commit"):
        self.prepare = prepare  # (*args) -> Accepted, in the stage thread; may raise for that message alone
        self.commit = commit  # Intake.commit
        self.max_batch = max_batch
        self.delay = delay  # under load, seconds to let more sessions join a batch (ENVOI_SMTP_COMMIT_DELAY)
        self._last_batch = 0
        self._cond = threading.Condition()
        self._waiting: list[_Submitted] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, *args) -> asyncio.Future:
        """From the event loop: a future resolved with the Message-ID once the message is committed."""
        loop = asyncio.get_running_loop()
        item = _Submitted(args, loop, loop.create_future())
        with self._cond:
            if self._closed:
                raise RuntimeError("commit stage closed")
            self._waiting.append(item)
            self._cond.notify()
        return item.future

    def close(self) -> None:
        """Commit what is waiting, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(30)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:
                    return
                company = self._last_batch > 1 and len(self._waiting) < self.max_batch and not self._closed
            if company and self.delay:
                time.sleep(self.delay)  # under load: the sessions busy with their next message join this batch
            with self._cond:
                batch = self._waiting[: self.max_batch]
                del self._waiting[: self.max_batch]
                self._last_batch = len(batch)
            self._process(batch)

    def _process(self, batch: list[_Submitted]) -> None:
        for item in batch:
            try:
                item.accepted = self.prepare(*item.args)
            except Exception as ex:
                item.outcome = ex
        ready = [item for item in batch if item.accepted is not None]
        if ready:
            try:
                errors = self.commit([item.accepted for item in ready])
            except Exception as ex:  # the transaction failed as a whole: nothing of it is committed
                errors = [ex] * len(ready)
            for item, error in zip(ready, errors, strict=True):
                item.outcome = error if error is not None else item.accepted.message_id
                if error is None and log.isEnabledFor(logging.DEBUG):  # to follow it (ENVOI_LOG_FORMAT=json)
                    log.debug("message accepted", extra={"message_id": item.accepted.message_id})
        by_loop: dict[asyncio.AbstractEventLoop, list[_Submitted]] = {}
        for item in batch:
            by_loop.setdefault(item.loop, []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # the loop is closed: its sessions are gone
                log.warning("commit stage: %d results for a closed event loop", len(items))


def _resolve(items: list[_Submitted]) -> None:
    for item in items:
        if item.future.done():  # the session went away (cancelled) meanwhile
            continue
        if isinstance(item.outcome, BaseException):
            item.future.set_exception(item.outcome)
        else:
            item.future.set_result(item.outcome)
