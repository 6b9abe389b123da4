"""Live stream latency: event recorded (transaction committed) -> received by an SSE client.

Starts the real API (`gunicorn --worker-class gthread`, as `envoi api` does) on a free port against a
benchmark database, connects C clients to GET /v3/{domain}/events/live (one of them through the
account-wide /v3/events/live), then records N events at R events/s through Events.record() +
committed() (what intake and the relay do) and measures, per event and client, the time from the
commit returning to the event's `data:` line arriving at the client.

Usage: .venv/bin/python bench/stream_latency.py [--events 2000] [--rate 100] [--clients 4]
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from bench_domain import verified_domain

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from envoi import runtime  # noqa: E402
from envoi.commands.logs import sse_events  # noqa: E402
from envoi.events.service import NewEvent, item  # noqa: E402
from envoi.infra.migrate import ensure_database, migrate  # noqa: E402
from envoi.infra.settings import Settings  # noqa: E402

DSN = os.environ.get("ENVOI_BENCH_STREAM_DSN", "postgresql://postgres@127.0.0.1:5432/envoi_bench_stream")
REDIS_BASE = os.environ.get("ENVOI_BENCH_REDIS", "redis://127.0.0.1:6379")


def free_redis_db() -> str:
    """An empty Redis db number, claimed like the test suite does (so a test run never shares it)."""
    import redis

    for number in range(1, 16):
        conn = redis.Redis.from_url(f"{REDIS_BASE}/{number}")
        if conn.dbsize() == 0 and conn.set("envoi:test:claim", "bench", nx=True, ex=3600):
            return f"{REDIS_BASE}/{number}"
    raise RuntimeError("no empty Redis database")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0, help="events recorded per second")
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()

    ensure_database(DSN)
    migrate(DSN)
    redis_url = free_redis_db()
    key = secrets.token_bytes(32)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(database_url=DSN, redis_url=redis_url, secret_key=key, lookup_key=key, public_url=url)
    services = runtime.build(settings, pool_size=2)
    account, domain = verified_domain(services.accounts, f"s{time.time_ns()}.bench", "stream-bench")
    _, api_key = services.accounts.create_key(account["id"], "admin")

    env = dict(os.environ, ENVOI_DATABASE_URL_EU=DSN, REDIS_URL=redis_url, ENVOI_PUBLIC_URL=url,
               ENVOI_SECRET_KEY=base64.b64encode(key).decode(), ENVOI_LOOKUP_KEY=base64.b64encode(key).decode())
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "16",
         "--worker-class", "gthread", "--log-level", "warning", "envoi.wsgi:get_app()"], env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

        sent: dict[str, float] = {}
        received: list[dict[str, float]] = [{} for _ in range(args.clients)]
        opened = [threading.Event() for _ in range(args.clients)]
        done_at: list[float | None] = [None]  # readers give up 15 s after the last event was recorded

        def reader(i: int) -> None:
            """Like `envoi logs --follow`: when a response ends, reconnect with Last-Event-ID."""
            path = "/v3/events/live" if i == 0 else f"/v3/{domain['name']}/events/live"
            last_id = None
            while len(received[i]) < args.events and (done_at[0] is None or time.monotonic() < done_at[0] + 15):
                for event_id, data in sse_events(f"{url}{path}?timeout=20", api_key, last_event_id=last_id,
                                                 opened=opened[i].set):
                    last_id = event_id
                    if data is not None:
                        received[i][data["id"]] = time.perf_counter()
                    if len(received[i]) >= args.events:
                        return

        threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(args.clients)]
        for t in threads:
            t.start()
        for e in opened:
            assert e.wait(10), "stream did not open"

        message = {"headers": {"to": "r@dest.test", "message-id": "m@bench", "from": "s@bench", "subject": "bench"},
                   "tags": [], "size": 1000}
        t0 = time.perf_counter()
        for n in range(args.events):
            data = item("delivered", message=message, recipient=f"r{n}@dest.test")
            events = [NewEvent(account["id"], domain["id"], None, data)]
            with services.db.transaction() as conn:
                services.events.record(conn, events)
            sent[data["id"]] = time.perf_counter()
            services.events.committed(events)
            pause = t0 + (n + 1) / args.rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        record_s = time.perf_counter() - t0
        done_at[0] = time.monotonic()
        for t in threads:
            t.join(40)
        latencies = [(got[i] - sent[i]) * 1000 for got in received for i in got if i in sent]
        lost = args.events * args.clients - len(latencies)
        print(f"{args.events} events at {args.events / record_s:.0f}/s to {args.clients} SSE clients "
              f"(gunicorn gthread 2x16); {len(latencies)} deliveries, {lost} missing")
        print("| latency commit -> SSE client | p50 ms | p90 ms | p99 ms | max ms |")
        print("| --- | --- | --- | --- | --- |")
        print(f"| all clients | {pct(latencies, 50):.1f} | {pct(latencies, 90):.1f} | {pct(latencies, 99):.1f} "
              f"| {max(latencies):.1f} |")
    finally:
        server.terminate()  # graceful: gunicorn waits for open streams up to its graceful timeout
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        services.redis.flushdb()
        services.close()


if __name__ == "__main__":
    main()
