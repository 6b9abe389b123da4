"""A watchdog that breaks a connection's socket when the work on it outlives its deadline.

A thread blocked on a socket (a database that stopped answering, a network path that stopped
forwarding, a driver waiting to read while its own output is unsent) cannot time itself out. This
one thread can: it shuts the socket down (both directions), the blocked call fails at once, and the
connection is unusable afterwards, so its pool discards it. Watching costs a dict insert and
removal under a lock: nothing goes over the network.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time

log = logging.getLogger(__name__)
IDLE = 0.5  # seconds the watchdog sleeps with nothing to watch (a deadline shorter than this fires up to it late)


class Watch:
    """One watched piece of work; `fired` says whether its deadline broke the socket."""

    __slots__ = ("fd", "deadline", "fired", "seconds")

    def __init__(self, fd: int, seconds: float):
        self.fd = fd
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.fired = False


class Deadlines:
    def __init__(self, name: str = "envoi-deadlines"):
        self.name = name
        self._cond = threading.Condition()
        self._watched: dict[int, Watch] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, fd: int, seconds: float) -> tuple[int, Watch]:
        """Shut socket `fd` down unless release() comes within `seconds`."""
        watch = Watch(fd, seconds)
        with self._cond:
            key = next(self._ids)
            self._watched[key] = watch
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            # PERF: not woken here: with nothing to watch the thread looks again within IDLE seconds,
            # before a deadline (15 s by default) is due. Waking it was a thread switch per transaction.
        return key, watch

    def release(self, key: int) -> None:
        """The work is over: the socket is left alone. (Under the lock, so the fd cannot be
        reused by another connection while the watchdog is shutting it down.)"""
        with self._cond:
            self._watched.pop(key, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                if not self._watched:
                    self._cond.wait(IDLE)
                    continue
                now = time.monotonic()
                earliest = min(w.deadline for w in self._watched.values())
                if earliest > now:
                    # New watches expire no earlier than the ones here (same durations), so
                    # sleeping until this one is enough; a shorter one just wakes us late.
                    self._cond.wait(min(earliest - now, 1.0))
                    continue
                for key, watch in list(self._watched.items()):
                    if watch.deadline <= now:
                        del self._watched[key]
                        watch.fired = True
                        _shut(watch.fd)
                        log.warning("connection (fd %d) still busy after %.1f s: broke it", watch.fd,
                                    watch.seconds)


def _shut(fd: int) -> None:
    try:
        sock = socket.socket(fileno=os.dup(fd))  # a duplicate: closing it leaves the original open
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)  # acts on the connection itself, whichever descriptor
    except OSError:
        pass
    finally:
        sock.close()
