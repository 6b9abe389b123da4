"""The quota check costs no Postgres round trip: with billing on and a capped plan (the free plan: a daily
and a monthly cap, so every accept runs the Redis check), N accepted messages make Postgres receive exactly
the statements and transactions they make with billing off.

Counted at the Database boundary: the region's pool hands out connections traced by libpq (psycopg's
`pgconn.trace`), so what is counted is what went over the wire to Postgres — every simple Query and every
extended-protocol Execute — and every transaction (pool checkout). Only this thread's connections are
counted (the stats fold runs in a thread of its own, on a timer)."""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections import Counter
from datetime import UTC, datetime

import pytest
from falcon import testing
from psycopg.pq import Trace

from envoi import runtime
from envoi.api.app import create_app
from tests.support.api import accepted, send_form

N = 20


class WireCount:
    """Wraps a Database's pool so that this thread's connections are traced by libpq while checked out."""

    def __init__(self, db):
        self.db = db
        self.counts: Counter = Counter()
        self.thread = threading.current_thread()

    @contextlib.contextmanager
    def counting(self):
        original = self.db.pool.connection

        @contextlib.contextmanager
        def connection(*args, **kwargs):
            with original(*args, **kwargs) as conn:
                if threading.current_thread() is not self.thread:
                    yield conn
                    return
                self.counts["transactions"] += 1
                with tempfile.TemporaryFile("w+") as trace:
                    conn.pgconn.trace(trace.fileno())
                    conn.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
                    try:
                        yield conn
                    finally:
                        conn.pgconn.untrace()  # flushes
                        trace.seek(0)
                        for line in trace.read().splitlines():
                            fields = line.split()
                            if len(fields) > 2 and fields[0] == "F" and fields[2] in ("Query", "Execute"):
                                self.counts["statements"] += 1
        self.db.pool.connection = connection
        try:
            yield self.counts
        finally:
            del self.db.pool.connection  # the instance attribute hid the pool's own method


@pytest.fixture
def regions(settings):
    on = runtime.build(settings.replace(billing=True), pool_size=2)
    off = runtime.build(settings, pool_size=2)
    yield on, off
    on.close()
    off.close()


@pytest.fixture
def nothing_left_queued(db, domain):
    yield
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'", (domain["id"],))


def wire_cost(region, api_key, domain) -> Counter:
    client = testing.TestClient(create_app(region.settings, region))
    for _ in range(2):  # warm the caches (the key, its principal with the plan, the sending domain)
        accepted(send_form(client, api_key, domain))
    # The process's pool and the intake's own connection (the group commit writes there).
    with WireCount(region.db).counting() as counts, WireCount(region.intake.db).counting() as intake:
        for _ in range(N):
            accepted(send_form(client, api_key, domain))
    return counts + intake


def test_the_quota_check_adds_no_postgres_statement_per_accepted_message(regions, account, domain, api_key, db,
                                                                        nothing_left_queued):
    on, off = regions
    plan = on.plans.get(account["plan"])
    assert plan.daily_cap and plan.monthly_cap  # a capped plan: every accept runs the check
    day_key = on.quota.keys(account["id"], datetime.now(UTC))[0]
    before = int(on.redis.get(day_key) or 0)

    with_billing = wire_cost(on, api_key, domain)
    without = wire_cost(off, api_key, domain)

    # The check ran (billing on counted every message in Redis) and cost Postgres nothing.
    assert int(on.redis.get(day_key)) - before == N + 2
    assert without["statements"] >= N and without["transactions"] >= N  # the counting sees every accept
    assert with_billing == without, (with_billing, without)
