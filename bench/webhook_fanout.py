"""The outbox fan-out with account-level webhooks: the cost of matching a batch of events to both levels
(domain URLs and the account's account-level URLs, deduplicated) against the domain-only statement it
replaced, interleaved in the same run on the same database (the machine is shared and noisy: only the
ratio means something).

Run: PYTHONPATH=. .venv/bin/python bench/webhook_fanout.py   (a throwaway database on 127.0.0.1)
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envoi.infra.migrate import ensure_database, migrate  # noqa: E402
from envoi.webhooks import store  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432/postgres"
BATCH = 200  # events per statement (an intake group commit's worth)
ROUNDS = 40

# The statement before account-level webhooks (domain URLs only), kept here as the reference.
DOMAIN_ONLY = (
    "INSERT INTO webhook_deliveries (account_id, domain_id, event_type, url, url_sealed, endpoint, event_id,"
    " payload)"
    " SELECT u.account_id, u.domain_id, u.event_type, w.url, w.url_sealed, w.endpoint, u.event_id, u.payload::jsonb"
    " FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::text[]) WITH ORDINALITY"
    " AS u(account_id, domain_id, event_type, event_id, payload, n)"
    " JOIN webhooks w ON w.domain_id = u.domain_id AND w.event_type = u.event_type"
    " ORDER BY u.n, w.id")

# The statement of account-level webhooks before subaccounts reached their parents' URLs (two levels).
TWO_LEVELS = (
    "WITH u AS MATERIALIZED (SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::text[])"
    " WITH ORDINALITY AS u(account_id, domain_id, event_type, event_id, payload, n))"
    " INSERT INTO webhook_deliveries (account_id, domain_id, event_type, url, url_sealed, endpoint, event_id,"
    " payload)"
    " SELECT account_id, domain_id, event_type, url, url_sealed, endpoint, event_id, payload::jsonb FROM ("
    "  SELECT u.*, w.url, w.url_sealed, w.endpoint, 0 AS level, w.id FROM u"
    "  JOIN webhooks w ON w.domain_id = u.domain_id AND w.event_type = u.event_type"
    "  UNION ALL"
    "  SELECT u.*, w.url, w.url_sealed, w.endpoint, 1, w.id FROM u"
    "  JOIN webhooks w ON w.domain_id IS NULL AND w.account_id = u.account_id AND w.event_type = u.event_type"
    "  WHERE NOT EXISTS (SELECT 1 FROM webhooks d WHERE d.domain_id = u.domain_id"
    "   AND d.event_type = u.event_type AND d.url = w.url)) s"
    " ORDER BY n, level, id")


def setup(conn) -> list[tuple]:
    """200 accounts with a domain each and one domain webhook URL for `accepted`; a batch of events."""
    events = []
    for i in range(200):
        account = conn.execute("INSERT INTO accounts (name, region) VALUES (%s, 'eu') RETURNING id",
                               (f"bench-{i}",)).fetchone()[0]
        domain = conn.execute(
            "INSERT INTO domains (account_id, name, dkim_selector, dkim_private_key, dkim_public_key, dkim_key_size)"
            " VALUES (%s, %s, 's', '\\x00', 'p', 1024) RETURNING id", (account, f"d{i}.bench.test")).fetchone()[0]
        store.set_urls(conn, account, domain, "accepted", [(f"https://hooks{i}.bench.test/h", None)])
        events.append((account, domain))
    payload = json.dumps({"event": "accepted", "recipient": "r@bench.test", "message": {"headers": {}}})
    return [(a, d, "accepted", uuid.uuid4().hex, payload) for a, d in events[:BATCH]]


def timed(conn, run) -> float:
    start = time.perf_counter()
    with conn.transaction(force_rollback=True):
        run()
    return time.perf_counter() - start


def timed_rows(conn, run) -> int:
    with conn.transaction(force_rollback=True):
        cur = run()
        return cur.rowcount


def main() -> None:
    name = f"envoi_bench_{uuid.uuid4().hex[:8]}"
    dsn = psycopg.conninfo.make_conninfo(PG, dbname=name)
    ensure_database(dsn)
    migrate(dsn)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            with conn.transaction():
                events = setup(conn)
            conn.execute("ANALYZE")
            columns = [list(c) for c in zip(*events, strict=True)]
            old = lambda: conn.execute(DOMAIN_ONLY, columns)  # noqa: E731
            new = lambda: store.enqueue_for_events(conn, events)  # noqa: E731
            two = lambda: conn.execute(TWO_LEVELS, columns)  # noqa: E731
            for _ in range(5):  # warm the plans
                timed(conn, old), timed(conn, two), timed(conn, new)
            a, b, t = [], [], []
            for _ in range(ROUNDS):  # interleaved: the same noise for each
                a.append(timed(conn, old))
                t.append(timed(conn, two))
                b.append(timed(conn, new))
            ma, mb, mt = statistics.median(a), statistics.median(b), statistics.median(t)
            print(f"fan-out of {BATCH} events (each with 1 domain URL, no account-level URL), median of {ROUNDS}:")
            print(f"  domain-only statement (before): {ma * 1000:.2f} ms")
            print(f"  domain and account levels, no parents' (before subaccounts): {mt * 1000:.2f} ms"
                  f"   ratio {mt / ma:.2f}")
            print(f"  both levels and parents', deduplicated (now): {mb * 1000:.2f} ms   ratio {mb / ma:.2f}")
            # With an account-level URL on each account too (twice the outbox rows).
            with conn.transaction():
                for account, _domain, *_ in events:
                    store.insert_account_hook(conn, account, uuid.uuid4().hex[:24], f"https://acct{account}.bench.test/",
                                              "", ["accepted"])
            conn.execute("ANALYZE")
            c = [timed(conn, new) for _ in range(ROUNDS)]
            print(f"  both levels, 1 domain + 1 account URL each (2x rows): {statistics.median(c) * 1000:.2f} ms")
            # Every account a subaccount of one of 20 parents, each parent with an account-level URL:
            # each event also reaches its parent's URL (3x rows).
            with conn.transaction():
                for p in range(20):
                    parent = conn.execute("INSERT INTO accounts (name, region) VALUES (%s, 'eu') RETURNING id",
                                          (f"bench-parent-{p}",)).fetchone()[0]
                    store.insert_account_hook(conn, parent, uuid.uuid4().hex[:24], f"https://parent{p}.bench.test/",
                                              "", ["accepted"])
                    conn.execute("UPDATE accounts SET parent_id = %s WHERE id = ANY(%s)",
                                 (parent, [a for a, *_ in events[p::20]]))
            conn.execute("ANALYZE")
            rows = timed_rows(conn, new)
            d = [timed(conn, new) for _ in range(ROUNDS)]
            print(f"  subaccounts, + their parent's account URL ({rows} rows): {statistics.median(d) * 1000:.2f} ms")
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
