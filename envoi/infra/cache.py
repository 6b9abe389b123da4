"""A small time-bounded cache for hot per-request lookups (API keys, domain rows, per-domain settings)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

_MISSING = object()


class TTLCache:
    """Values live `ttl` seconds; writers call forget() so this process sees its own changes at once.

    Other processes see a change within `ttl`: the price of not reading Postgres on every message.
    """

    def __init__(self, ttl: float, max_size: int = 10_000):
        self.ttl = ttl
        self.max_size = max_size
        self._data: dict[Hashable, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], Any], keep: Callable[[Any], bool] | None = None) -> Any:
        """The cached value, or load() (kept for `ttl` unless keep(value) says no)."""
        now = time.monotonic()
        entry = self._data.get(key, _MISSING)
        if entry is not _MISSING and entry[0] > now:
            return entry[1]
        value = load()
        if keep is not None and not keep(value):
            return value
        with self._lock:
            if len(self._data) >= self.max_size:
                self._data.clear()
            self._data[key] = (now + self.ttl, value)
        return value

    def forget(self, key: Hashable | None = None) -> None:
        with self._lock:
            if key is None:
                self._data.clear()
            else:
                self._data.pop(key, None)
