"""random_bytes(n): the operating system's random bytes (os.urandom), drawn a few kilobytes at a time.

PERF: an accepted message takes four small draws (its Message-ID, storage key, event id, body nonce), and
each os.urandom is a getrandom call that lets go of the GIL: with a worker's request threads queued for
it, every draw handed the GIL to another thread and waited to get it back (two thread switches). Here a
draw is a slice of a block read from os.urandom; each byte is handed out once, under a lock.

A forked child starts with an empty block (and a fresh lock): it must never hand out its parent's bytes
again (a body nonce used twice under one key would break AES-GCM).
"""

from __future__ import annotations

import os
import threading

BLOCK = 4096  # bytes read from the OS at a time
_LARGE = 256  # a larger draw goes to os.urandom directly


class _Pool:
    __slots__ = ("lock", "block", "used")

    def __init__(self):
        self.lock = threading.Lock()
        self.block = b""
        self.used = 0


_pool = _Pool()


def random_bytes(n: int) -> bytes:
    if n > _LARGE:
        return os.urandom(n)
    pool = _pool
    with pool.lock:
        start = pool.used
        if start + n > len(pool.block):
            pool.block, start = os.urandom(BLOCK), 0
        pool.used = start + n
        return pool.block[start:start + n]


def _forget_after_fork() -> None:
    global _pool
    _pool = _Pool()


os.register_at_fork(after_in_child=_forget_after_fork)
