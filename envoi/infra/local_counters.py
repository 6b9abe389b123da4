"""Fixed-window counters kept in this process: what a Redis-backed throttle counts with while Redis is
unreachable, so an outage never gives brute force a free pass (envoi.mta.submission.throttle,
envoi.accounts.throttle)."""

from __future__ import annotations

import threading
import time


class LocalCounters:
    def __init__(self, window: float, max_keys: int = 100_000):
        self.window = window
        self.max_keys = max_keys  # an outage under a spray of addresses must not grow memory for ever
        self._counts: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def incr(self, key: str) -> int:
        """Count one against `key` (a new window when the last one ran out); return the window's count."""
        now = time.monotonic()
        with self._lock:
            count, until = self._counts.get(key, (0, 0.0))
            if until <= now:
                count, until = 0, now + self.window
                if len(self._counts) >= self.max_keys:
                    self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
            self._counts[key] = (count + 1, until)
            return count + 1

    def add_within(self, counters: list[tuple[str, int | None]], n: int) -> int | None:
        """Add n to every counter, or to none when one would pass its limit (None: no limit): None when
        added, else the index of the first counter that refused (BoundedCounters' rule, in-process)."""
        now = time.monotonic()
        with self._lock:
            counts = [self._counts.get(key, (0, 0.0)) for key, _ in counters]
            counts = [(c, u) if u > now else (0, now + self.window) for c, u in counts]
            for i, ((_, limit), (count, _)) in enumerate(zip(counters, counts, strict=True)):
                if limit is not None and count + n > limit:
                    return i
            if len(self._counts) >= self.max_keys:
                self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
            for (key, _), (count, until) in zip(counters, counts, strict=True):
                self._counts[key] = (count + n, until)
            return None

    def subtract(self, key: str, n: int) -> None:
        with self._lock:
            count, until = self._counts.get(key, (0, 0.0))
            if until > time.monotonic():
                self._counts[key] = (max(0, count - n), until)

    def get(self, key: str) -> int:
        with self._lock:
            count, until = self._counts.get(key, (0, 0.0))
            return count if until > time.monotonic() else 0

    def forget(self, key: str | None = None) -> None:
        """Drop one key's count, or every count."""
        with self._lock:
            if key is None:
                self._counts.clear()
            else:
                self._counts.pop(key, None)
