"""Deterministic profile (cProfile) of the HTTP API's app for one request kind, one thread, in one process.

    .venv/bin/python bench/api_accept_cprofile.py [--kind attachment] [--n 2000] [--sort tottime] [--top 40]

bench/api_accept_cpu.py's setup (a fresh migrated database, runtime.build(), create_app(), a verified
domain and key) and its request bodies, called on the WSGI app from this one thread (so each request
leads its own group commit, which runs in the calling thread and is profiled with it); the live-stream
publisher's and doorbell's threads are not profiled. Prints the CPU per message without and with the
profiler, and pstats' top functions. py-spy samples (bench/api_accept_cpu.py --profile) show shares
under concurrency; this shows call counts and per-call costs in this thread's CPU time, with cProfile's overhead on each call.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import cProfile
import io
import pstats
import secrets
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_accept_cpu import ADMIN, REDIS, body  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="urlencoded", choices=["urlencoded", "multipart", "attachment", "mime"])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", help="also dump the pstats data here")
    args = parser.parse_args()

    import psycopg

    from envoi import runtime
    from envoi.api.app import create_app
    from envoi.infra.migrate import ensure_database, migrate
    from envoi.infra.settings import Settings

    name = f"envoi_bench_{uuid.uuid4().hex[:10]}"
    dsn = psycopg.conninfo.make_conninfo(ADMIN, dbname=name)
    ensure_database(dsn)
    svc = None
    try:
        migrate(dsn)
        settings = Settings(region="eu", database_url=dsn, redis_url=REDIS, secret_key=secrets.token_bytes(32),
                            lookup_key=secrets.token_bytes(32), public_url="http://127.0.0.1:8025")
        svc = runtime.build(settings)
        app = create_app(settings, svc)
        account = svc.accounts.create_account(f"bench-{uuid.uuid4().hex[:6]}")
        domain = f"{uuid.uuid4().hex[:8]}.example.test"
        svc.accounts.add_domain(account["id"], domain, dkim_key_size=1024, verified=True)
        _, api_key = svc.accounts.create_key(account["id"], "admin")
        auth = "Basic " + base64.b64encode(f"api:{api_key}".encode()).decode()
        run = uuid.uuid4().hex[:8]

        def environs(first: int, count: int) -> list[dict]:
            out = []
            for i in range(first, first + count):
                path, ctype, data = body(args.kind, domain, run, i)
                out.append({"REQUEST_METHOD": "POST", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
                            "SERVER_PORT": "8025", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
                            "CONTENT_TYPE": ctype, "CONTENT_LENGTH": str(len(data)), "HTTP_AUTHORIZATION": auth,
                            "HTTP_HOST": "127.0.0.1:8025", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(data),
                            "wsgi.errors": sys.stderr, "wsgi.version": (1, 0), "wsgi.multithread": True,
                            "wsgi.multiprocess": True, "wsgi.run_once": False})
            return out

        def drive(todo: list[dict]) -> float:
            cpu0 = time.thread_time()
            for env in todo:
                status: list[str] = []
                chunks = app(env, lambda s, h, exc_info=None, status=status: status.append(s))
                b"".join(chunks)
                if not status[0].startswith("200"):
                    raise SystemExit(f"{status[0]}")
            return (time.thread_time() - cpu0) / len(todo) * 1e6

        drive(environs(0, 300))
        plain = drive(environs(300, args.n))
        todo = environs(300 + args.n, args.n)
        profiler = cProfile.Profile(time.thread_time)  # CPU, not wall time (waits on Postgres)
        profiler.enable()
        profiled = drive(todo)
        profiler.disable()
        print(f"{args.kind}: this thread's CPU per message {plain:.1f} us; under cProfile {profiled:.1f} us")
        stats = pstats.Stats(profiler).strip_dirs().sort_stats(args.sort)
        if args.out:
            stats.dump_stats(args.out)
        stats.print_stats(args.top)
    finally:
        if svc is not None:
            with contextlib.suppress(Exception):
                svc.close()
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
