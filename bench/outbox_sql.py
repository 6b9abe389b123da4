"""The webhook outbox's Postgres cost per delivery, stage by stage: the relay's `delivered` events
written with their outbox rows (Events.record with the webhooks writer, as the relay's outcome
commit does), the dispatcher's claim, and its results write (attempts, outbox rows, endpoint health).
Measured as the CPU of the Postgres backend running each stage (/proc/PID/stat, which a shared machine
disturbs far less than wall time), per delivery.

Run (root, to read the backend's /proc): PYTHONPATH=. .venv/bin/python bench/outbox_sql.py [--n 20000]
[--batch 50] [--claim 200]. A throwaway database on 127.0.0.1, dropped at the end. Every stage runs
over the same rows in the same order the system runs them (events in batches of --batch, a claim of
up to --claim rows, the results of each claim written in one transaction), so the outbox's indexes
and dead rows grow as they do under the relay.
"""

from __future__ import annotations

import argparse
import inspect
import os
import secrets
import sys
import time
import uuid
from pathlib import Path

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_domain import verified_domain  # noqa: E402
from relay_vs_postfix_lib import REDIS_BASE, _free_redis_db  # noqa: E402

from envoi import runtime  # noqa: E402
from envoi.events.service import NewEvent, item  # noqa: E402
from envoi.infra.migrate import ensure_database, migrate  # noqa: E402
from envoi.infra.settings import Settings  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432/postgres"
TICK = os.sysconf("SC_CLK_TCK")


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def message(i: int) -> dict:
    return {"id": i, "headers": {"to": f"r{i}@example.net", "message-id": f"<m{i}@bench.example>",
                                 "from": "bench@bench.example", "subject": "Hello"},
            "tags": [], "user_variables": {}, "options": {}, "attachments": [], "size": 5000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000, help="delivered events (one outbox row each)")
    parser.add_argument("--batch", type=int, default=50, help="events per relay outcome commit")
    parser.add_argument("--claim", type=int, default=200, help="rows per claim")
    parser.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    parser.add_argument("--alter", action="append", default=[], metavar="SQL",
                        help="run this statement after the migrations (a schema variant to compare); repeatable")
    args = parser.parse_args()
    redis_url = f"{REDIS_BASE}/{_free_redis_db()}"
    dbname = f"envoi_outbox_{uuid.uuid4().hex[:8]}"
    url = psycopg.conninfo.make_conninfo(PG, dbname=dbname)
    services = None
    try:
        ensure_database(url)
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in args.alter:
                conn.execute(statement)
        key = secrets.token_bytes(32)
        settings = Settings(region="eu", database_url=url, redis_url=redis_url, secret_key=key, lookup_key=key,
                            webhook_allow=("127.0.0.1/32",))
        services = runtime.build(settings, pool_size=1)
        accounts, webhooks, events = services.accounts, services.webhooks, services.events
        account, domain = verified_domain(accounts, "bench.example")
        webhooks.create(domain, "delivered", ["http://127.0.0.1:9/hook"])
        webhooks.signing_key(account["id"])
        db = services.db
        with db.transaction() as conn:
            pid = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
        cpu = {"events + outbox": 0.0, "claim + results": 0.0}
        wall = dict.fromkeys(cpu, 0.0)

        def timed(stage: str, fn):
            c0, t0 = backend_cpu(pid), time.perf_counter()
            out = fn()
            wall[stage] += time.perf_counter() - t0
            cpu[stage] += backend_cpu(pid) - c0
            return out

        def write_events(first: int) -> None:
            evs = [NewEvent(account["id"], domain["id"], None, item(
                "delivered", message=message(i), recipient=f"r{i}@example.net",
                delivery_status={"code": 250, "message": "OK"})) for i in range(first, first + args.batch)]
            with db.pipelined() as conn:
                events.record(conn, evs)
            events.committed(evs)

        # A dispatcher whose claim also writes the results waiting (webhooks.claim's `results`) writes
        # each claim's results with the next claim; an older one writes them in a transaction of their own.
        merged = "results" in inspect.signature(webhooks.claim).parameters
        made = 0
        sent = 0
        results, health = [], []
        # Interleaved as in the system: events come in, a claim takes what is due, its results are written.
        while sent < args.n:
            while made < args.n and made - sent < args.claim:
                timed("events + outbox", lambda first=made: write_events(first))
                made += args.batch
            if merged:
                rows, _keys = timed("claim + results", lambda r=results, h=health: webhooks.claim(args.claim, (), r, h))
                sent += len(results)
            else:
                rows, _keys = timed("claim + results", lambda: webhooks.claim(args.claim))
            results = [(r["id"], r["domain_id"], r["attempts"] + 1, 200, None, 3, "ok", "delivered", "delivered",
                        None) for r in rows]
            health = [(account["id"], rows[0]["endpoint"], len(rows), 0, None)] if rows else []
            if not merged:
                if results:
                    timed("claim + results", lambda results=results, health=health: webhooks.record(results, health))
                sent += len(rows)
        print(f"# outbox_sql: {args.n} delivered events in commits of {args.batch}, claims of {args.claim};"
              f" load {' '.join(f'{x:.2f}' for x in os.getloadavg())}" + "".join(f"; {a}" for a in args.alter))
        for stage in cpu:
            print(f"{stage:18} backend CPU {cpu[stage] * 1e6 / args.n:6.1f} us/delivery,"
                  f" wall {wall[stage] * 1e6 / args.n:6.1f} us/delivery")
        print(f"{'total':18} backend CPU {sum(cpu.values()) * 1e6 / args.n:6.1f} us/delivery")
        with db.transaction() as conn:
            sizes = conn.execute(
                "SELECT c.relname, pg_relation_size(c.oid) AS bytes FROM pg_class c"
                " WHERE c.relname LIKE 'webhook_%%' AND c.relkind IN ('r', 'i') ORDER BY 1").fetchall()
        print("sizes: " + ", ".join(f"{r['relname']} {r['bytes'] // 1024} kB" for r in sizes))
    finally:
        if services is not None:
            services.close()
        redis.Redis.from_url(redis_url).flushdb()  # gives the Redis database back (its claim key too)
        print(f"database {dbname}" + (" kept" if args.keep else " dropped"))
        if not args.keep:
            with psycopg.connect(PG, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


if __name__ == "__main__":
    main()
