"""SMTP submission throughput: messages/s accepted over STARTTLS+AUTH, each committed to Postgres.

    .venv/bin/python bench/submission_rate.py [--connections 10] [--messages 3000] [--recipients 1] [--processes 1] [--no-intake]

A private database is created (and dropped afterwards) on ENVOI_TEST_PG's server (default the local
Postgres), with one account, domain and SMTP login. `envoi smtp`'s server runs in a child process
(its own GIL) with the real intake: every 250 means the message, its recipients and its `accepted`
events were committed. The client is aiosmtplib with N connections, each sending its share of the
messages back to back with RSET in between (as a relay would). Reports wall-clock msgs/s, the
client-observed DATA->250 latency (p50/p99), and the server's CPU per message.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import secrets
import ssl
import statistics
import tempfile
import time
import uuid

import aiosmtplib
import psycopg
import redis
from bench_domain import verified_domain

PG_ADMIN = os.environ.get("ENVOI_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("ENVOI_TEST_REDIS", "redis://127.0.0.1:6379")


def _free_redis_db() -> str:
    for number in range(15, 0, -1):  # an unused db, claimed like the test suite does
        url = f"{REDIS_BASE}/{number}"
        conn = redis.Redis.from_url(url)
        if conn.dbsize() == 0 and conn.set("envoi:test:claim", "1", nx=True, ex=3600):
            return url
    raise RuntimeError("no empty Redis database")
PASSWORD = "bench-password"


def message(domain: str, n: int, recipients: list[str]) -> bytes:
    return (f"From: Bench <bench@{domain}>\r\nTo: {', '.join(recipients)}\r\nSubject: bench {n}\r\n"
            f"X-Mailgun-Tag: bench\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
            + "Hello from the submission benchmark.\r\n" * 40).encode()


def _setup(dsn: str, redis_url: str, secret: bytes) -> str:
    from envoi import runtime
    from envoi.infra.settings import Settings

    services = runtime.build(Settings(database_url=dsn, redis_url=redis_url, secret_key=secret, lookup_key=secret), pool_size=1)
    account, domain = verified_domain(services.accounts, "bench.example.test")
    services.accounts.create_credential(account["id"], domain["name"], "bench", PASSWORD)
    services.close()
    return domain["name"]


def _server(dsn: str, redis_url: str, secret: bytes, cert: str, key: str, port: int, conn, stop,
            intake: bool, reuse_port: bool) -> None:
    from envoi import runtime
    from envoi.infra.settings import Settings
    from envoi.mta.submission.server import SubmissionServer
    from envoi.mta.submission.tls import server_context

    services = runtime.build(Settings(database_url=dsn, redis_url=redis_url, secret_key=secret, lookup_key=secret), pool_size=10)
    submission = runtime.build_submission(services)
    if not intake:  # measure the SMTP layer alone: answer 250 without committing anything
        submission.submit = lambda *args: "<bench@bench.example.test>"
    with SubmissionServer(submission, server_context(cert, key), port=port, smtps_port=None,
                          reuse_port=reuse_port) as server:
        conn.send(server.port)
        cpu = time.process_time()
        stop.wait()
        conn.send(time.process_time() - cpu)
    submission.close()
    services.close()


async def _connection(port, ctx, domain, count, recipients, latencies) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=ctx, timeout=60)
    await client.connect()
    await client.login(f"bench@{domain}", PASSWORD)
    for n in range(count):
        rcpts = [f"r{n}-{i}@dest.test" for i in range(recipients)]
        started = time.perf_counter()
        await client.sendmail(f"bench@{domain}", rcpts, message(domain, n, rcpts))
        latencies.append(time.perf_counter() - started)
        await client.rset()
    await client.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--recipients", type=int, default=1, help="recipients per message")
    parser.add_argument("--processes", type=int, default=1, help="server processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--no-intake", action="store_true",
                        help="SMTP layer only: the server answers 250 without calling intake (nothing stored)")
    args = parser.parse_args()

    from envoi.infra.migrate import ensure_database, migrate

    name = f"envoi_bench_{uuid.uuid4().hex[:8]}"
    dsn = psycopg.conninfo.make_conninfo(PG_ADMIN, dbname=name)
    ensure_database(dsn)
    migrate(dsn)
    redis_url = _free_redis_db()
    secret = secrets.token_bytes(32)
    domain = _setup(dsn, redis_url, secret)
    mp = multiprocessing.get_context("spawn")
    stop = mp.Event()
    try:
        with tempfile.TemporaryDirectory() as cert_dir:
            from envoi.mta.submission.tls import dev_certificate

            cert, key = (str(p) for p in dev_certificate(cert_dir))
            pipes, procs, port = [], [], 0
            for _ in range(args.processes):  # the first binds a free port, the others share it
                here, there = mp.Pipe()
                proc = mp.Process(target=_server, args=(dsn, redis_url, secret, cert, key, port, there, stop,
                                                        not args.no_intake, args.processes > 1))
                proc.start()
                port = here.recv()
                pipes.append(here)
                procs.append(proc)
            ctx = ssl.create_default_context(cafile=cert)
            latencies: list[float] = []
            per_conn = args.messages // args.connections

            async def run() -> None:
                await asyncio.gather(*(_connection(port, ctx, domain, per_conn, args.recipients, latencies)
                                       for _ in range(args.connections)))

            started = time.perf_counter()
            asyncio.run(run())
            wall = time.perf_counter() - started
            stop.set()
            server_cpu = sum(pipe.recv() for pipe in pipes)
            for proc in procs:
                proc.join(30)
        with psycopg.connect(dsn) as conn:
            stored = conn.execute("SELECT count(*) FROM messages WHERE method = 'smtp'").fetchone()[0]
            events = conn.execute("SELECT count(*) FROM events WHERE event = 'accepted'").fetchone()[0]
        sent = per_conn * args.connections
        latencies.sort()
        print(f"server processes {args.processes}, connections {args.connections}, messages {sent}, "
              f"recipients/message {args.recipients}, "
              f"size {len(message(domain, 0, ['r0-0@dest.test']))} bytes")
        print(f"accepted and committed: {stored} messages, {events} accepted events")
        print(f"wall clock: {wall:.2f} s -> {sent / wall:,.0f} msg/s")
        print(f"DATA->250 latency: p50 {statistics.median(latencies) * 1000:.1f} ms, "
              f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms")
        print(f"server CPU: {server_cpu:.2f} s -> {server_cpu / sent * 1000:.2f} ms/message "
              f"({sent / server_cpu:,.0f} msg/s per server core, all server processes together)")
        assert stored == (0 if args.no_intake else sent), "every 250 must be a committed message"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        redis.Redis.from_url(redis_url).flushdb()


if __name__ == "__main__":
    main()
