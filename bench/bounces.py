"""Bounce handling figures: reply classification, DSN/ARF parsing, and inbound DSN processing rate.

    .venv/bin/python bench/bounces.py [--reports 1000] [--connections 4]

Part 1 (pure CPU, one core): `from_reply()` over the classifier's real-world corpus, and
`dsn.parse()` / `arf.parse()` over the fixtures in tests/fixtures/bounces.

Part 2 (end to end): a private database is created (and dropped) on ENVOI_TEST_PG's server with one
account, domain and N single-recipient messages; the inbound listener runs in a child process (its
own GIL) and N Postfix-style DSNs, each at its per-recipient VERP address, are sent over M smtplib
connections. Every 250 means the `failed` event, the bounce_reports row and the suppression entry
were committed. Reports DSNs/s wall clock.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import smtplib
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import redis
from bench_domain import verified_domain

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "tests" / "fixtures" / "bounces"
PG_ADMIN = os.environ.get("ENVOI_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("ENVOI_TEST_REDIS", "redis://127.0.0.1:6379")


def _free_redis_db() -> str:
    for number in range(15, 0, -1):
        url = f"{REDIS_BASE}/{number}"
        conn = redis.Redis.from_url(url)
        if conn.dbsize() == 0 and conn.set("envoi:test:claim", "1", nx=True, ex=3600):
            return url
    raise RuntimeError("no empty Redis database")


def rate(fn, seconds: float = 1.5) -> float:
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - started)


def cpu_figures() -> None:
    from envoi.mta.bounces import arf, dsn
    from envoi.mta.delivery.outcome import from_reply
    from tests.unit.mta.delivery.test_outcome import CORPUS

    replies = [(code, text) for code, text, _, _ in CORPUS]
    per_round = len(replies)
    r = rate(lambda: [from_reply(c, t) for c, t in replies]) * per_round
    print(f"classify: {r:,.0f} replies/s ({1e6 / r:.1f} µs each, corpus of {per_round})")
    for name, parser in (("postfix_dsn.eml", dsn.parse), ("exchange_dsn.eml", dsn.parse),
                         ("gmail_dsn_mailbox_full.eml", dsn.parse), ("yahoo_arf.eml", arf.parse)):
        raw = (FIXTURES / name).read_bytes()
        r = rate(lambda raw=raw, parser=parser: parser(raw))
        print(f"{parser.__module__.rsplit('.', 1)[1]}.parse({name}, {len(raw)} B): {r:,.0f}/s")


def _server(dsn_url: str, redis_url: str, secret: bytes, count: int, conn, stop) -> None:
    from envoi import runtime
    from envoi.accounts.service import Principal
    from envoi.infra.settings import Settings
    from envoi.mta.bounces import verp
    from envoi.mta.compose import compose

    settings = Settings(database_url=dsn_url, redis_url=redis_url, secret_key=secret, lookup_key=secret)
    services = runtime.build(settings, pool_size=10)
    account, domain = verified_domain(services.accounts, "bench.example.test")
    key = verp.key_from_secret(secret)
    targets = []
    for n in range(count):
        rcpt = f"gone{n}@dest.example"
        draft = compose(domain["name"], {"from": [f"s@{domain['name']}"], "to": [rcpt], "subject": ["x"],
                                         "text": ["x"]}, [], [])
        message_id = services.intake.accept(Principal(None, account["id"], "admin"), domain, draft).strip("<>")
        with services.db.transaction() as c:
            row = c.execute("SELECT r.id, r.message_pk FROM recipients r JOIN messages m ON m.id = r.message_pk"
                            " WHERE m.message_id = %s", (message_id,)).fetchone()
        targets.append((rcpt, message_id, verp.return_path(domain["name"], row["message_pk"], row["id"], key)))
    server = runtime.build_inbound(services, host="127.0.0.1", port=0).start()
    conn.send((server.port, targets))
    stop.wait()
    server.stop()
    services.close()


def end_to_end(reports: int, connections: int) -> None:
    name = f"envoi_bench_{uuid.uuid4().hex[:8]}"
    dsn_url = psycopg.conninfo.make_conninfo(PG_ADMIN, dbname=name)
    from envoi.infra.migrate import ensure_database, migrate

    ensure_database(dsn_url)
    migrate(dsn_url)
    redis_url = _free_redis_db()
    parent, child = multiprocessing.Pipe()
    stop = multiprocessing.Event()
    proc = multiprocessing.Process(target=_server, args=(dsn_url, redis_url, secrets.token_bytes(32), reports,
                                                         child, stop))
    proc.start()
    try:
        port, targets = parent.recv()
        template = (FIXTURES / "postfix_dsn.eml").read_text().replace("\n", "\r\n")

        def one_connection(share):
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                for rcpt, message_id, return_path in share:
                    raw = (template.replace("nosuchuser@example.net", rcpt)
                           .replace("20261123164011.1.DEADBEEF@mg.example.com", message_id)
                           .replace("bounce+aaaq.aaaae.abcdefgh@mg.example.com", return_path))
                    client.sendmail("", [return_path], raw.encode())

        started = time.perf_counter()
        with ThreadPoolExecutor(connections) as pool:
            list(pool.map(one_connection, [targets[i::connections] for i in range(connections)]))
        elapsed = time.perf_counter() - started
        with psycopg.connect(dsn_url) as c:
            events = c.execute("SELECT count(*) FROM events WHERE event = 'failed'").fetchone()[0]
            listed = c.execute("SELECT count(*) FROM suppress_bounces").fetchone()[0]
        print(f"inbound: {reports} DSNs over {connections} connections in {elapsed:.2f} s = "
              f"{reports / elapsed:,.0f} DSNs/s; failed events {events}, bounce entries {listed}")
    finally:
        stop.set()
        proc.join(30)
        redis.Redis.from_url(redis_url).flushdb()
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    cpu_figures()
    end_to_end(args.reports, args.connections)
