"""The delivery queue as an operator sees it: how much waits, for which destinations, on which relay
hosts, and how late it is. Read-only.

Cost, measured with 1 M queued recipients (and 1 M finished ones) on the development Postgres: the
exact totals (store.queue_depth, an index-only count over recipients_due) ~125 ms; the most overdue
(the first entry of recipients_due) ~1 ms; per destination and per relay host, over the HEAD_SCAN
(20 000) recipients due soonest (a range of recipients_due + a hash aggregate) ~55 ms and ~35 ms;
overview() in all ~200 ms. None reads the whole table; only the totals grow with the queue.
"""

from __future__ import annotations

from envoi.infra.db import Database
from envoi.mta import store

#: How many of the soonest-due queued recipients the per-destination and per-host figures look at.
HEAD_SCAN = 20_000


class Queue:
    def __init__(self, db: Database):
        self.db = db

    def overview(self, *, limit: int = 25, scan: int = HEAD_SCAN) -> dict:
        """{"queued", "due", "scheduled" (later), "oldest_due_at", "scanned", "complete",
        "destinations": [...], "relay_hosts": [...]}; destinations and hosts are counted over the
        `scan` queued recipients due soonest (`complete` says whether that was the whole queue)."""
        with self.db.transaction() as conn:
            depth = store.queue_depth(conn)
            destinations = store.queue_by_destination(conn, limit, scan)
            hosts = store.queue_by_relay_host(conn, scan)
            oldest = store.oldest_due(conn)
        return {"queued": depth["scheduled"], "due": depth["due"], "scheduled": depth["scheduled"] - depth["due"],
                "oldest_due_at": oldest, "scanned": min(depth["scheduled"], scan),
                "complete": depth["scheduled"] <= scan, "destinations": destinations, "relay_hosts": hosts}
