"""Events-out figures: webhook delivery rate, fair claim cost, tracking render cost, suppression check cost.

Run: .venv/bin/python bench/events_out.py   (uses a throwaway database and a free Redis db on 127.0.0.1)
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
import uuid
from pathlib import Path

import psycopg
import redis
from bench_domain import verified_domain

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envoi import runtime  # noqa: E402
from envoi.accounts.service import Principal  # noqa: E402
from envoi.infra.migrate import ensure_database, migrate  # noqa: E402
from envoi.infra.settings import Settings  # noqa: E402
from envoi.mta.compose import compose  # noqa: E402
from envoi.webhooks import store  # noqa: E402
from envoi.webhooks.dispatch import Dispatcher  # noqa: E402
from tests.support.webhook_receiver import Receiver  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_redis() -> str:
    for n in range(15, 0, -1):
        conn = redis.Redis(db=n)
        if conn.dbsize() == 0 and conn.set("envoi:test:claim", "1", nx=True, ex=3600):
            return f"redis://127.0.0.1:6379/{n}"
    raise SystemExit("no free Redis db")


def main() -> None:
    name = f"envoi_bench_{uuid.uuid4().hex[:8]}"
    dsn = psycopg.conninfo.make_conninfo(PG, dbname=name)
    ensure_database(dsn)
    migrate(dsn)
    redis_url = free_redis()
    settings = Settings(database_url=dsn, redis_url=redis_url, secret_key=secrets.token_bytes(32),
                        lookup_key=secrets.token_bytes(32),
                        webhook_allow=("127.0.0.1/32",), webhook_per_endpoint=50, webhook_per_account=50)
    svc = runtime.build(settings, pool_size=4)
    try:
        acct, dom = verified_domain(svc.accounts, "bench.example.test")
        principal = Principal(None, acct["id"], "admin")

        # 1. Webhook delivery: outbox -> the asyncio dispatcher, in this process -> local receiver.
        #    (bench/webhook_dispatch.py measures the dispatcher processes at volume.)
        n = 300
        with Receiver(svc.webhooks.signing_key(acct["id"])) as receiver:
            svc.webhooks.create(dom, "accepted", [receiver.url("/hook")])
            for i in range(n):
                draft = compose(dom["name"], {"from": [f"a@{dom['name']}"], "to": [f"r{i}@bench.test"],
                                              "subject": ["s"], "text": ["t"], "o:testmode": ["yes"]}, [], [])
                svc.intake.accept(principal, dom, draft)
            started = time.perf_counter()
            asyncio.run(Dispatcher(svc.webhooks).drain())
            elapsed = time.perf_counter() - started
            with svc.db.transaction() as c:
                states = c.execute("SELECT status, attempts, count(*) AS n FROM webhook_deliveries"
                                   " GROUP BY 1, 2").fetchall()
                errors = c.execute("SELECT error, count(*) AS n FROM webhook_attempts GROUP BY 1").fetchall()
            assert len(receiver.requests) == n and all(r["valid"] for r in receiver.requests), (states, errors)
        print(f"webhooks: {n} signed deliveries by the dispatcher (1 process) in {elapsed:.2f} s = {n / elapsed:.0f}/s")

        # 2. Fair claim with a backlog: 20,000 due rows over 200 endpoints of 50 accounts.
        with svc.db.transaction() as c:
            rows = [(1 + i % 50, dom["id"], "delivered", f"http://h{i % 200}.example:80/x", f"e{i}", {"id": i})
                    for i in range(20_000)]
            store.insert_deliveries(c, rows)
        timings = []
        for _ in range(5):
            with svc.db.transaction() as c:
                t = time.perf_counter()
                ids = store.claim(c, 2, 4, 500, 300)
                timings.append(time.perf_counter() - t)
                c.rollback()
        print(f"claim: {len(ids)} rows leased out of a 20,000-row backlog in "
              f"{min(timings) * 1000:.0f} ms (best of 5)")

        # 3. Tracking render: one message to 100 recipients with open + click + unsubscribe on.
        for kind in ("open", "click", "unsubscribe"):
            svc.tracking.update_settings(dom, kind, {"active": "yes"})
        html = "<html><body>" + "".join(f'<p><a href="https://shop.example/p{i}">item {i}</a></p>'
                                        for i in range(10)) + "</body></html>"
        draft = compose(dom["name"], {"from": [f"a@{dom['name']}"], "to": [", ".join(f"r{i}@bench.test"
                                                                                     for i in range(100))],
                                      "subject": ["s"], "text": ["see https://shop.example/"], "html": [html]}, [], [])
        t = time.perf_counter()
        out = svc.tracking.render(dom, draft)
        render = time.perf_counter() - t
        print(f"tracking render: 100 per-recipient copies (10 links each) in {render * 1000:.0f} ms "
              f"= {render * 10:.2f} ms per recipient ({len(out.copies)} copies)")

        # 4. Suppression check: a 500-recipient relay batch against 30,000 list entries.
        with svc.db.transaction() as c:
            from envoi.suppression import store as sstore

            vault = svc.suppressions.vault  # entries are stored as a keyed hash and a sealed address

            def entry(table: str, address: str) -> tuple:
                return dom["id"], vault.lookup(address), vault.seal(table, dom["id"], address)

            sstore.upsert_bounces(c, [(*entry("suppress_bounces", f"b{i}@bench.test"), "550", "", None)
                                      for i in range(20_000)])
            sstore.upsert_unsubscribes(c, [(*entry("suppress_unsubscribes", f"u{i}@bench.test"), ["*"], None)
                                           for i in range(10_000)])
        checks = [(acct["id"], dom["id"], f"{'bu'[i % 2]}{i * 7}@bench.test", []) for i in range(500)]
        timings = []
        for _ in range(5):
            with svc.db.transaction() as c:
                t = time.perf_counter()
                reasons = svc.suppressions.blocked(c, checks)
                timings.append(time.perf_counter() - t)
        print(f"suppressions.blocked: 500 recipients ({sum(1 for r in reasons if r)} suppressed) in "
              f"{min(timings) * 1000:.1f} ms (best of 5)")
    finally:
        svc.close()
        redis.Redis.from_url(redis_url).flushdb()
        with psycopg.connect(PG, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
