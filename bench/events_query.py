"""Events API query latency over a large partitioned events table.

Loads N events (default 10,000,000) across 1,000 domains spread over the last 29 days into a
separate benchmark database (INSERT ... SELECT generate_series, one statement per million rows,
indexes built after the load), then times the common queries through Events.search()/page()
(search_json/page_json: the code behind GET /v3/{domain}/events producing its JSON body, including
the retention floor, filter compilation and paging tokens; HTTP framing excluded):

  by recipient        recipient=<addr>, newest first, default limit 100, no time range
  by message id       message-id=<id>
  by event over a day event=delivered, begin/end = one day, ascending, limit 300
  paging 10,000       first page + next URLs, limit 300, until 10,000 events were read

Usage: .venv/bin/python bench/events_query.py [--events N] [--domains 1000] [--samples 300] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta

import psycopg

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from envoi import runtime  # noqa: E402
from envoi.events import store  # noqa: E402
from envoi.infra.migrate import ensure_database, migrate  # noqa: E402
from envoi.infra.settings import Settings  # noqa: E402

DSN = os.environ.get("ENVOI_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/envoi_bench_events")
DAYS = 29
CHUNK = 1_000_000
INDEXES = {
    "events_domain_ts": "(domain_id, ts, id)",
    "events_domain_recipient": "(domain_id, recipient, ts, id)",
    "events_domain_event": "(domain_id, event, ts, id)",
    "events_domain_message": "(domain_id, message_id)",
}

# One message m = g / 3 (its domain = m % domains); g % 3 = 0 accepted, 1 delivered/failed, 2 opened/...
LOAD = """
INSERT INTO events (event_id, account_id, domain_id, message_pk, event, severity, recipient, message_id, ts,
                    data, sender, subject, tags)
SELECT eid, acct, dom, m, ev, sev, rcpt, mid, ts,
       jsonb_build_object(
         'event', ev, 'id', eid, 'timestamp', extract(epoch FROM ts), 'log-level', 'info',
         'recipient', rcpt, 'recipient-domain', split_part(rcpt, '@', 2), 'method', 'http',
         'tags', to_jsonb(tags), 'user-variables', jsonb_build_object('order', m::text),
         'flags', jsonb_build_object('is-authenticated', true, 'is-test-mode', false),
         'envelope', jsonb_build_object('sender', 'bounce@d' || dom || '.bench', 'targets', rcpt,
                                        'transport', 'smtp', 'sending-ip', '203.0.113.' || (m %% 200)),
         'message', jsonb_build_object(
            'headers', jsonb_build_object('to', rcpt, 'message-id', mid, 'from', sender, 'subject', subject),
            'attachments', '[]'::jsonb, 'size', 2000 + m %% 30000),
         'delivery-status', CASE WHEN ev IN ('delivered', 'failed') THEN jsonb_build_object(
            'code', CASE WHEN ev = 'delivered' THEN 250 ELSE 451 END, 'attempt-no', 1,
            'message', CASE WHEN ev = 'delivered' THEN 'OK queued as ' || m ELSE 'Try again later' END,
            'mx-host', 'mx' || (m %% 5) || '.example' || (m %% 50) || '.test', 'tls', true,
            'certificate-verified', true, 'session-seconds', 0.4) END),
       sender, subject, tags
FROM (
  SELECT g, m, acct, dom, ev, rcpt, mid, ts,
         substr(md5(g::text), 1, 22) AS eid,
         CASE WHEN ev = 'failed' THEN 'temporary' END AS sev,
         'Shop <no-reply@d' || dom || '.bench>' AS sender,
         'Your order ' || m || ' has shipped' AS subject,
         CASE WHEN m %% 4 = 0 THEN ARRAY['newsletter'] ELSE ARRAY['receipt', 'tx'] END AS tags
  FROM (
    SELECT g, g / 3 AS m, %(d0)s + (g / 3) %% %(domains)s AS dom, %(a0)s + (g / 3) %% %(domains)s AS acct,
           CASE g %% 3 WHEN 0 THEN 'accepted'
                       WHEN 1 THEN CASE WHEN g %% 31 = 1 THEN 'failed' ELSE 'delivered' END
                       ELSE CASE WHEN g %% 5 = 2 THEN 'clicked' ELSE 'opened' END END AS ev,
           'user' || ((g / 3 / %(domains)s) %% 3000) || '@example' || ((g / 3) %% 50) || '.test' AS rcpt,
           'm' || (g / 3) || '@d' || (%(d0)s + (g / 3) %% %(domains)s) || '.bench' AS mid,
           %(start)s::timestamptz + ((g / 3)::float8 / %(messages)s) * %(span)s * interval '1 second'
             + (g %% 3) * interval '2 seconds' AS ts
    FROM generate_series(%(lo)s, %(hi)s) AS g
  ) a
) b
"""


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def setup(conn, domains: int) -> tuple[int, int]:
    conn.execute("TRUNCATE events, event_stats_hourly, event_tags")
    conn.execute("DELETE FROM domains WHERE name LIKE 'd%%.bench'")
    conn.execute("DELETE FROM accounts WHERE name LIKE 'bench-%%'")
    a0 = conn.execute("SELECT coalesce(max(id), 0) + 1 AS n FROM accounts").fetchone()["n"]
    conn.execute("SELECT setval('accounts_id_seq', %s + %s)", (a0, domains))
    conn.execute("INSERT INTO accounts (id, name, region) SELECT %s + i, 'bench-' || i, 'eu'"
                 " FROM generate_series(0, %s - 1) i", (a0, domains))
    d0 = conn.execute("SELECT coalesce(max(id), 0) + 1 AS n FROM domains").fetchone()["n"]
    conn.execute("SELECT setval('domains_id_seq', %s + %s)", (d0, domains))
    conn.execute("INSERT INTO domains (id, account_id, name, dkim_selector, dkim_private_key, dkim_public_key,"
                 " dkim_key_size) SELECT %s + i, %s + i, 'd' || (%s + i) || '.bench', 'envoi', '\\x00', 'x', 1024"
                 " FROM generate_series(0, %s - 1) i", (d0, a0, d0, domains))
    return a0, d0


def load(dsn: str, n: int, domains: int) -> dict:
    ensure_database(dsn)
    migrate(dsn)
    now = datetime.now(UTC)
    start = now - timedelta(days=DAYS)
    with psycopg.connect(dsn, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        a0, d0 = setup(conn, domains)
        existing = store.partitions(conn)
        day = start.date()
        while day <= (now + timedelta(days=3)).date():
            if day not in existing:
                with conn.transaction():
                    store.create_partition(conn, day)
            day += timedelta(days=1)
        for name in INDEXES:
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("SET synchronous_commit = off")
        t0 = time.perf_counter()
        messages = max(1, n // 3)
        for lo in range(0, n, CHUNK):
            hi = min(n, lo + CHUNK) - 1
            conn.execute(LOAD, {"lo": lo, "hi": hi, "d0": d0, "a0": a0, "domains": domains, "messages": messages,
                                "start": start, "span": DAYS * 86400 - 60})
            print(f"  loaded {hi + 1:,} rows ({time.perf_counter() - t0:.0f} s)", flush=True)
        t_rows = time.perf_counter() - t0
        t1 = time.perf_counter()
        for name, cols in INDEXES.items():
            conn.execute(f"CREATE INDEX {name} ON events {cols}")
        t_index = time.perf_counter() - t1
        t2 = time.perf_counter()
        conn.execute("VACUUM (ANALYZE) events")
        t_vacuum = time.perf_counter() - t2
        size = conn.execute("SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))) AS s"
                            " FROM pg_inherits WHERE inhparent = 'events'::regclass").fetchone()["s"]
    return {"rows_s": t_rows, "index_s": t_index, "vacuum_s": t_vacuum, "size": size, "d0": d0}


def timed(fn, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--reuse", action="store_true", help="query the data already loaded")
    args = parser.parse_args()

    if not args.reuse:
        print(f"loading {args.events:,} events across {args.domains} domains into {DSN} ...", flush=True)
        info = load(DSN, args.events, args.domains)
        print(f"load: rows {info['rows_s']:.0f} s ({args.events / info['rows_s']:,.0f} rows/s), "
              f"indexes {info['index_s']:.0f} s, vacuum analyze {info['vacuum_s']:.0f} s, size {info['size']}")
    # Only queries run here: nothing is written to Redis.
    settings = Settings(database_url=DSN, redis_url=os.environ.get("ENVOI_BENCH_REDIS", "redis://127.0.0.1:6379/0"),
                        secret_key=secrets.token_bytes(32), lookup_key=secrets.token_bytes(32))  # reads no sealed data
    services = runtime.build(settings, pool_size=2)
    with services.db.transaction() as conn:
        domains = conn.execute("SELECT id, account_id, name FROM domains WHERE name LIKE 'd%%.bench' ORDER BY id"
                               ).fetchall()
        total = conn.execute("SELECT count(*) AS n FROM events").fetchone()["n"]
        samples = conn.execute(
            "SELECT domain_id, recipient, message_id, ts FROM events TABLESAMPLE SYSTEM (0.1) LIMIT %s",
            (args.samples * 3,)).fetchall()
    by_id = {d["id"]: d for d in domains}
    samples = [s for s in samples if s["domain_id"] in by_id]
    random.seed(7)
    random.shuffle(samples)
    print(f"{total:,} events in {len(domains)} domains; {len(samples)} sampled rows; "
          f"{args.samples} queries per case")
    events = services.events
    it = iter(samples * 3)

    def by_recipient():
        s = next(it)
        body = events.search_json(by_id[s["domain_id"]], {"recipient": [s["recipient"]]})
        assert not body.startswith('{"items":[]'), s

    def by_message():
        s = next(it)
        body = events.search_json(by_id[s["domain_id"]], {"message-id": [s["message_id"]]})
        assert not body.startswith('{"items":[]'), s

    def by_event_day():
        s = next(it)
        day = s["ts"].replace(hour=0, minute=0, second=0, microsecond=0)
        body = events.search_json(by_id[s["domain_id"]], {
            "event": ["delivered"], "begin": [str(day.timestamp())], "end": [str(day.timestamp() + 86400)],
            "ascending": ["yes"], "limit": ["300"]})
        assert not body.startswith('{"items":[]'), s

    page_ms: list[float] = []
    walk_ms: list[float] = []

    def paging():
        """Walk one domain's events 300 at a time; each page is timed alone (the JSON body as the API
        sends it), decoding the body to find the next URL is not."""
        domain = random.choice(domains)
        t = time.perf_counter()
        body = events.search_json(domain, {"limit": ["300"]})
        walk = [(time.perf_counter() - t) * 1000]
        result = json.loads(body)
        seen = len(result["items"])
        while seen < 10_000 and result["items"]:
            token = result["paging"]["next"].rsplit("/", 1)[1]
            t = time.perf_counter()
            body = events.page_json(domain, token)
            walk.append((time.perf_counter() - t) * 1000)
            result = json.loads(body)
            seen += len(result["items"])
        page_ms.extend(walk)
        walk_ms.append(sum(walk))
        return seen

    cases = {}
    for name, fn in (("by recipient", by_recipient), ("by message id", by_message),
                     ("by event type over a day", by_event_day)):
        timed(fn, 20)  # warm-up
        cases[name] = timed(fn, args.samples)
    walks = max(5, args.samples // 30)
    read = [paging() for _ in range(walks)]
    print()
    print("| query | p50 ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- |")
    for name, values in cases.items():
        print(f"| {name} | {pct(values, 50):.1f} | {pct(values, 99):.1f} | {max(values):.1f} |")
    print(f"| paging, per page of 300 ({len(page_ms)} pages) | {pct(page_ms, 50):.1f} | {pct(page_ms, 99):.1f} "
          f"| {max(page_ms):.1f} |")
    print(f"| paging through {min(read):,}+ events (sum of its pages, {walks} walks) | {pct(walk_ms, 50):.0f} "
          f"| {pct(walk_ms, 99):.0f} | {max(walk_ms):.0f} |")
    services.close()


if __name__ == "__main__":
    main()
