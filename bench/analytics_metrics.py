"""What a POST /v1/analytics/metrics query costs, from each of its two sources, against counting the
same events directly (the reference, measured in the same run).

Records N events (default 100,000) for one account's domain over the last 29 days through
Events.record() (so the stats rollups are written as in production), folds the rollups, then times
Analytics.metrics() (the code behind the endpoint, JSON framing excluded):

  rollup, by day          dimensions [time], resolution day, 30 days, 5 counts (served by the rollups)
  rollup, by tag          dimensions [tag], same range
  events, by recipient    dimensions [recipient_domain] (not in the rollups: one GROUP BY over the events)
  events, unique opens    dimensions [time] + unique_opened_count (needs the events)
  reference               SELECT event, count(*) FROM events WHERE domain_id = … GROUP BY event

Usage: .venv/bin/python bench/analytics_metrics.py [--events 100000] [--samples 20]
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import time
import uuid

import psycopg
from bench_domain import verified_domain

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from envoi import runtime  # noqa: E402
from envoi.events.service import NewEvent, item  # noqa: E402
from envoi.infra.migrate import ensure_database, migrate  # noqa: E402
from envoi.infra.settings import Settings  # noqa: E402

DSN = os.environ.get("ENVOI_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/envoi_bench_analytics")
DAYS = 29
BATCH = 1000
EVENTS = (("accepted", 0.3), ("delivered", 0.3), ("opened", 0.2), ("clicked", 0.1), ("failed", 0.1))
RCPT_DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "dest.test", "example.org")
TAGS = ("news", "promo", "receipts", "alerts")


def load(services, domain, n: int) -> float:
    rng = random.Random(7)
    now = time.time()
    started = time.perf_counter()
    names, weights = zip(*EVENTS, strict=True)
    for offset in range(0, n, BATCH):
        batch = []
        for _ in range(min(BATCH, n - offset)):
            event = rng.choices(names, weights)[0]
            rcpt = f"u{rng.randrange(5000)}@{rng.choice(RCPT_DOMAINS)}"
            message = {"headers": {"to": rcpt, "message-id": f"{rng.randrange(20000)}@{domain['name']}",
                                   "from": f"s@{domain['name']}", "subject": "Hi"},
                       "tags": [rng.choice(TAGS)], "size": 1000}
            fields = {"method": "http"} if event in ("accepted", "delivered") else {}
            if event == "failed":
                fields = {"severity": rng.choice(("permanent", "temporary")), "reason": "bounce"}
            if event in ("opened", "clicked"):
                fields = {"client_info": {"device-type": rng.choice(("mobile", "desktop"))}}
            data = item(event, message=message, recipient=rcpt, ts=now - rng.random() * DAYS * 86400, **fields)
            batch.append(NewEvent(domain["account_id"], domain["id"], None, data))
        with services.db.transaction() as conn:
            services.events.record(conn, batch)
    services.stats.fold()
    return time.perf_counter() - started


def timed(fn, samples: int) -> float:
    fn()  # warm
    runs = []
    for _ in range(samples):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    with psycopg.connect(DSN.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DSN.rsplit('/', 1)[1]}")
    ensure_database(DSN)
    migrate(DSN)
    settings = Settings(database_url=DSN, redis_url=os.environ.get("ENVOI_BENCH_REDIS", "redis://127.0.0.1:6379/0"),
                        secret_key=secrets.token_bytes(32), lookup_key=secrets.token_bytes(32))
    services = runtime.build(settings, pool_size=2)
    account, domain = verified_domain(services.accounts, f"{uuid.uuid4().hex[:8]}.bench.test")
    services.events.maintain()
    seconds = load(services, domain, args.events)
    print(f"loaded {args.events:,} events in {seconds:.1f} s (record() with the rollup writer)")
    with services.db.transaction() as conn:
        conn.execute("ANALYZE events")
        conn.execute("ANALYZE event_stats_hourly")
    counts = ["accepted_count", "delivered_count", "opened_count", "clicked_count", "failed_count"]
    base = {"duration": "30d", "resolution": "day", "metrics": counts}
    cases = {
        "rollup, by day": dict(base, dimensions=["time"]),
        "rollup, by tag": dict(base, dimensions=["tag"]),
        "events, by recipient domain": dict(base, dimensions=["recipient_domain"]),
        "events, unique opens by day": dict(base, dimensions=["time"], metrics=[*counts, "unique_opened_count"]),
    }

    def reference():
        with services.db.transaction() as conn:
            return conn.execute("SELECT event, count(*) FROM events WHERE domain_id = %s GROUP BY event",
                                (domain["id"],)).fetchall()

    ref = timed(reference, args.samples)
    print(f"reference (GROUP BY event over the domain's events): {ref:.1f} ms")
    print("| query | ms (median) | vs reference |")
    print("| --- | --- | --- |")
    for name, body in cases.items():
        ms = timed(lambda body=body: services.analytics.metrics(account["id"], body), args.samples)
        print(f"| {name} | {ms:.1f} | {ms / ref:.2f}x |")
    print(f"| reference | {ref:.1f} | 1.00x |")
    services.close()


if __name__ == "__main__":
    main()
