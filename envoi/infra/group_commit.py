"""Group commit: writes submitted by many threads share one transaction and one WAL flush.

A caller that finds nobody writing becomes the leader: it takes everything waiting (up to
`max_batch`), writes it with `write_batch`, hands each caller its result, and passes the lead to
the next waiter if more arrived meanwhile. Under load the batch grows by itself; alone, a caller
writes its own item at once, so the latency of a quiet system is unchanged.

Under load, a leader first waits `delay` seconds for company (Postgres's commit_delay): a batch
costs ~2 ms of client and database CPU whatever its size, so eight accepts in one batch cost about
a quarter of what four batches of two do. It waits only while the previous batch had company, so
a lone caller on a quiet system still writes at once.

Nothing is acknowledged before its batch committed: a failed batch raises in every caller of it.
A batch that fails because of its content (`isolate(error)` says so: a value the database refused)
is retried item by item, so one bad item cannot fail its neighbours. Other failures (the database
went away, possibly mid-commit) are not retried here: the callers get the error, as they would
without batching.

No caller waits for ever (`timeout`): one still queued when it runs out leaves the queue unwritten
and raises CommitTimeout; one whose batch is being written waits for that batch (which its writer
bounds) up to `timeout` more.
"""

from __future__ import annotations

import _thread
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from envoi.infra.errors import ServiceUnavailable

T = TypeVar("T")
R = TypeVar("R")


class CommitTimeout(ServiceUnavailable, TimeoutError):
    """The write did not happen (or its outcome is unknown) in the time allowed: the database is busy
    or not answering (503 / 451, as for DatabaseUnavailable)."""


class _Done:
    """A one-shot signal for the one thread that waits on it: threading.Event's set/wait/is_set on a
    bare lock, held until set (set releases it; the first wait that gets it notes it and keeps it).

    PERF: a waiter is woken once per accept; Event.set goes through a Condition (a Python-level waiter
    list, a lock allocated per wait): ~5 % of the API's GIL time was group commit's wake-ups."""

    __slots__ = ("_lock", "_got")

    def __init__(self):
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self._got = False

    def set(self) -> None:
        try:  # noqa: SIM105 (contextlib.suppress costs more than the release: this runs once per accept)
            self._lock.release()
        except RuntimeError:  # already set
            pass

    def is_set(self) -> bool:
        return self._got or not self._lock.locked()

    def wait(self, timeout: float | None = None) -> bool:
        if self._got:
            return True
        if self._lock.acquire(True, -1 if timeout is None else max(timeout, 0.0)):
            self._got = True
            return True
        return False


class _Waiter(Generic[T]):
    __slots__ = ("item", "done", "lead", "result", "error")

    def __init__(self, item: T):
        self.item = item
        self.done = _Done()
        self.lead = False  # promoted: write the next batch
        self.result = None
        self.error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    def __init__(self, write_batch: Callable[[list[T]], Sequence[R]], max_batch: int = 64,
                 isolate: Callable[[BaseException], bool] = lambda error: False, delay: float = 0.0,
                 timeout: float | None = None):
        self.write_batch = write_batch  # items -> one result per item, in order; commits before returning
        self.max_batch = max_batch
        self.timeout = timeout  # seconds a caller waits behind other writers; None = no limit
        self.isolate = isolate
        self.delay = delay
        self._last_batch = 1
        self._lock = threading.Lock()
        self._waiting: list[_Waiter[T]] = []
        self._busy = False  # a leader is writing (or has been promoted)
        self.batches = 0
        self.items = 0

    def submit(self, item: T) -> R:
        """Write `item` (in a batch with whatever else is waiting); return its result once committed."""
        me = _Waiter(item)
        with self._lock:
            self._waiting.append(me)
            leading = not self._busy
            self._busy = True
        if not leading:
            self._wait(me)
            if not me.lead:
                return self._outcome(me)
        if self.delay and self._last_batch > 1 and len(self._waiting) < self.max_batch:
            time.sleep(self.delay)  # under load: let the accepts being prepared now join this batch
        with self._lock:
            batch = self._waiting[: self.max_batch]
            self._last_batch = len(batch)
            del self._waiting[: self.max_batch]
        try:
            self._write(batch)
        finally:
            with self._lock:
                if self._waiting:
                    nxt = self._waiting[0]
                    nxt.lead = True
                    nxt.done.set()
                else:
                    self._busy = False
        return self._outcome(me)

    def _write(self, batch: list[_Waiter[T]]) -> None:
        try:
            outcomes = write_isolated(self.write_batch, [w.item for w in batch], self.isolate)
            self.batches += 1
            self.items += len(batch)
            for waiter, (result, error) in zip(batch, outcomes, strict=True):
                waiter.result, waiter.error = result, error
        except BaseException as ex:
            for waiter in batch:
                waiter.error = ex
        finally:
            for waiter in batch:
                waiter.lead = False
                waiter.done.set()

    def _wait(self, me: _Waiter[T]) -> None:
        """Until `me` is written or promoted; CommitTimeout past the timeout (see the module doc)."""
        if me.done.wait(self.timeout):
            return
        with self._lock:
            if me.done.is_set():  # written or promoted meanwhile (a promoted waiter must lead)
                return
            if me in self._waiting:  # never taken into a batch: nothing of it is written
                self._waiting.remove(me)
                raise CommitTimeout(f"not written within {self.timeout:g} s: the database is busy or not answering")
        if not me.done.wait(self.timeout):
            raise CommitTimeout(f"no outcome within {2 * self.timeout:g} s: the database is not answering")

    @staticmethod
    def _outcome(waiter: _Waiter[T]):
        if waiter.error is not None:
            raise waiter.error
        return waiter.result


def write_isolated(write_batch: Callable[[list[T]], Sequence[R]], items: list[T],
                   isolate: Callable[[BaseException], bool]) -> list[tuple[R | None, BaseException | None]]:
    """write_batch(items) as one batch; (result, None) per item, in order. If the batch fails because of
    its content (isolate(error)), each item is written alone so one bad item cannot fail the others,
    and gets (None, its error) if it fails again. Any other failure of the batch is raised: it
    concerns them all."""
    try:
        return [(result, None) for result in write_batch(items)]
    except BaseException as ex:
        if len(items) < 2 or not isolate(ex):
            raise
    outcomes: list[tuple[R | None, BaseException | None]] = []
    for item in items:
        try:
            [result] = write_batch([item])
            outcomes.append((result, None))
        except BaseException as ex:  # this item alone: the ones already written stay written
            outcomes.append((None, ex))
    return outcomes
