"""An account's last activity (a sign-in or a send), day-granular, for the inactive-account purge.

A send costs no write of its own: each process remembers which accounts it already marked active today,
so the UPDATE (in the accept's own transaction) happens at most once a day per account and process.
New activity also clears an inactivity warning (envoi.privacy.inactivity), which cancels that purge."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime

from envoi.infra.db import Connection

_TOUCH = ("UPDATE accounts SET last_active_on = %s, inactivity_warned_at = NULL"
          " WHERE id = ANY(%s) AND (last_active_on < %s OR inactivity_warned_at IS NOT NULL)")


def touch(conn: Connection, account_ids: Iterable[int], today: date) -> None:
    """Mark the accounts active on `today` (a no-op for those already marked)."""
    ids = sorted(set(account_ids))
    if ids:
        conn.execute(_TOUCH, (today, ids, today))


class Activity:
    def __init__(self, today: Callable[[], date] = lambda: datetime.now(UTC).date()):
        self.today = today
        self._marked: dict[int, date] = {}  # account id -> the day this process last marked it
        self._lock = threading.Lock()

    def record(self, conn: Connection, account_ids: Iterable[int]) -> None:
        """In the caller's transaction: mark the accounts not yet marked today by this process."""
        today = self.today()
        with self._lock:
            due = [a for a in set(account_ids) if self._marked.get(a) != today]
            for account_id in due:
                self._marked[account_id] = today
        if due:
            touch(conn, due, today)
