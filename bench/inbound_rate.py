"""Inbound routing rate: messages/s from SMTP into the inbound MX to the route's action done.

    .venv/bin/python bench/inbound_rate.py [--messages 1000] [--connections 4]

A private database is created (and dropped) on ENVOI_TEST_PG's server with one account, one receiving
domain and one route, `catch_all()` → `forward("http://127.0.0.1:PORT/in")`. The inbound MX runs in a
child process (its own GIL) with loopback allowed for route URLs; an HTTP receiver in this process counts
the parsed form POSTs. N messages (a text part, an HTML part and a 20 KB attachment) are sent over M
smtplib connections. Reports: accepted/s (every 250 means the message, its outbox row and its events
were committed) and routed/s (until the N-th POST, signed, parsed and multipart, reached the receiver).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import smtplib
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import redis
from bench_domain import verified_domain

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_ADMIN = os.environ.get("ENVOI_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("ENVOI_TEST_REDIS", "redis://127.0.0.1:6379")
DOMAIN = "inbound.bench.test"


def _free_redis_db() -> str:
    for number in range(15, 0, -1):
        url = f"{REDIS_BASE}/{number}"
        conn = redis.Redis.from_url(url)
        if conn.dbsize() == 0 and conn.set("envoi:test:claim", "1", nx=True, ex=3600):
            return url
    raise RuntimeError("no empty Redis database")


def _server(dsn_url: str, redis_url: str, secret: bytes, forward_url: str, conn, stop) -> None:
    from envoi import runtime
    from envoi.infra.settings import Settings

    settings = Settings(database_url=dsn_url, redis_url=redis_url, secret_key=secret,
                        webhook_allow=("127.0.0.0/8",))
    services = runtime.build(settings, pool_size=10)
    account, _ = verified_domain(services.accounts, DOMAIN)
    services.routes.create(account["id"], priority="0", description="bench", expression="catch_all()",
                           actions=[f'forward("{forward_url}")'])
    server = runtime.build_inbound(services, host="127.0.0.1", port=0).start()
    conn.send(server.port)
    stop.wait()
    server.stop()
    services.close()


class _Counter:
    def __init__(self):
        self.count = 0
        self.last = 0.0
        self.cond = threading.Condition()
        counter = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with counter.cond:
                    counter.count += 1
                    counter.last = time.perf_counter()
                    counter.cond.notify_all()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def message(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Sender <sender@outside.test>"
    msg["To"] = f"user{n}@{DOMAIN}"
    msg["Subject"] = f"inbound {n}"
    msg.set_content("Hello,\n\nthis is a reply.\n\nOn Monday someone wrote:\n> the question\n")
    msg.add_alternative("<p>Hello,</p><p>this is a reply.</p>", subtype="html")
    msg.add_attachment(os.urandom(20_000), maintype="application", subtype="octet-stream", filename="data.bin")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def run(count: int, connections: int) -> None:
    name = f"envoi_bench_{uuid.uuid4().hex[:8]}"
    dsn_url = psycopg.conninfo.make_conninfo(PG_ADMIN, dbname=name)
    from envoi.infra.migrate import ensure_database, migrate

    ensure_database(dsn_url)
    migrate(dsn_url)
    redis_url = _free_redis_db()
    counter = _Counter()
    forward_url = f"http://127.0.0.1:{counter.server.server_address[1]}/in"
    parent, child = multiprocessing.Pipe()
    stop = multiprocessing.Event()
    proc = multiprocessing.Process(target=_server, args=(dsn_url, redis_url, secrets.token_bytes(32), forward_url,
                                                         child, stop))
    proc.start()
    try:
        port = parent.recv()
        bodies = [message(n) for n in range(count)]

        def one_connection(share):
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                for n in share:
                    client.sendmail("sender@outside.test", [f"user{n}@{DOMAIN}"], bodies[n])

        started = time.perf_counter()
        with ThreadPoolExecutor(connections) as pool:
            list(pool.map(one_connection, [range(i, count, connections) for i in range(connections)]))
        accepted = time.perf_counter() - started
        with counter.cond:
            counter.cond.wait_for(lambda: counter.count >= count, 300)
            routed = counter.last - started
            posted = counter.count
        print(f"inbound: {count} messages (~{len(bodies[0]) // 1000} KB, 1 attachment) over {connections} "
              f"connections: accepted in {accepted:.2f} s = {count / accepted:,.0f} msg/s; all {posted} forward(url) "
              f"POSTs received after {routed:.2f} s = {posted / routed:,.0f} msg/s SMTP → route action")
    finally:
        stop.set()
        proc.join(30)
        counter.server.shutdown()
        redis.Redis.from_url(redis_url).flushdb()
        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    run(args.messages, args.connections)
