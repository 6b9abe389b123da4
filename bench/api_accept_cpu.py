"""CPU per accepted message of the HTTP API's app (no HTTP server), in one process, against another checkout.

    .venv/bin/python bench/api_accept_cpu.py [--baseline /tmp/envoi-base] [--kind urlencoded] [--rounds 4] [--n 3000]

Each round runs a child process per code tree (this checkout, then the baseline's, alternating which
goes first): a fresh migrated database (the tree's own migrations), runtime.build() and create_app()
as `envoi api` builds them, one verified domain and an API key, then `n` POSTs of the
bench/wrk_messages.lua bodies (urlencoded, multipart, attachment or mime: ~5 KB text, one recipient each) called
on the WSGI app from `threads` threads (as granian's blocking threads call it; accepts share group
commits), after 300 of warm-up. Printed per message: the process's CPU (all threads: the live-stream
publisher included), the CPU of the database's Postgres backends, and the rate. The request
environs are built before the clock starts: what is measured is the app (falcon, auth, form parsing,
compose, intake, events), not the server nor the client, so the relay is not running either.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ab_children  # noqa: E402
from bench_domain import backends_cpu, scratch_services, verified_domain  # noqa: E402

ADMIN = os.environ.get("ENVOI_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("ENVOI_BENCH_REDIS", "redis://127.0.0.1:6379/13")
TEXT = "Thank you for your order. Your parcel is on its way and will arrive soon.\r\n" * 66
BOUNDARY = "envoiwrkbench"
ATTACHMENT = "%PDF-1.4 invoice bytes 0123456789abcdef\n" * 50  # ~2 KB, as bench/wrk_messages.lua's


def _switches(pid: int) -> int:
    """Voluntary + involuntary context switches of a process's threads (a Postgres backend: one)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{task}/status") as f:
            total += sum(int(line.split()[1]) for line in f if "ctxt_switches:" in line)
    return total


def _own_switches() -> int:
    """This process's context switches, its ended threads' included (getrusage sums them)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


def _part(name: str, value: str) -> str:
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'


def body(kind: str, domain: str, run: str, i: int) -> tuple[str, str, bytes]:
    """(path, content type, body) of request i, as bench/wrk_messages.lua builds it."""
    rcpt = f"rcpt{i}@d{i % 1000:03d}.example.net"
    subject = f"Bench message {i}"
    sender = f"Bench <bench@{domain}>"
    if kind == "urlencoded":
        fields = [("from", sender), ("to", rcpt), ("subject", subject), ("text", TEXT), ("o:tag", run)]
        data = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in fields)
        return f"/v3/{domain}/messages", "application/x-www-form-urlencoded", data.encode()
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    if kind == "mime":
        raw = (f"From: {sender}\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\nMessage-ID: <{run}.{i}@{domain}>\r\n"
               f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{TEXT}")
        data = (_part("to", rcpt) + f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="message"; '
                f'filename="m.eml"\r\nContent-Type: message/rfc822\r\n\r\n{raw}\r\n--{BOUNDARY}--\r\n')
        return f"/v3/{domain}/messages.mime", ctype, data.encode()
    data = (_part("from", sender) + _part("to", rcpt) + _part("subject", subject) + _part("text", TEXT)
            + _part("o:tag", run))
    if kind == "attachment":
        data += (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="attachment"; filename="invoice.pdf"\r\n'
                 f"Content-Type: application/pdf\r\n\r\n{ATTACHMENT}\r\n")
    data += f"--{BOUNDARY}--\r\n"
    return f"/v3/{domain}/messages", ctype, data.encode()


@contextlib.contextmanager
def app_under_test(kind: str):
    """A fresh migrated database, runtime.build() and create_app() as `envoi api` builds them, a verified
    domain and an API key; yields (app, the database's name, environs(first, count) -> request environs of
    `kind`). Drops the database (and the run's live stream) on the way out."""
    from envoi.api.app import create_app

    with scratch_services(ADMIN, REDIS) as (name, settings, svc):
        app = create_app(settings, svc)
        domain = f"{uuid.uuid4().hex[:8]}.example.test"
        account, _ = verified_domain(svc.accounts, domain, f"bench-{uuid.uuid4().hex[:6]}")
        _, api_key = svc.accounts.create_key(account["id"], "admin")
        auth = "Basic " + base64.b64encode(f"api:{api_key}".encode()).decode()
        run = uuid.uuid4().hex[:8]

        def environs(first: int, count: int) -> list[dict]:
            out = []
            for i in range(first, first + count):
                path, ctype, data = body(kind, domain, run, i)
                out.append({"REQUEST_METHOD": "POST", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
                            "SERVER_PORT": "8025", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
                            "CONTENT_TYPE": ctype, "CONTENT_LENGTH": str(len(data)), "HTTP_AUTHORIZATION": auth,
                            "HTTP_HOST": "127.0.0.1:8025", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(data),
                            "wsgi.errors": sys.stderr, "wsgi.version": (1, 0), "wsgi.multithread": True,
                            "wsgi.multiprocess": True, "wsgi.run_once": False})
            return out

        yield app, name, environs


def child(kind: str, n: int, threads: int, profile: str | None) -> dict:
    import psycopg

    with app_under_test(kind) as (app, name, environs):
        failures = []

        def drive(todo: list[dict]) -> None:
            lock = threading.Lock()

            def worker() -> None:
                while True:
                    with lock:
                        if not todo:
                            return
                        env = todo.pop()
                    status: list[str] = []
                    chunks = app(env, lambda s, h, exc_info=None, status=status: status.append(s))
                    answer = b"".join(chunks)
                    if hasattr(chunks, "close"):
                        chunks.close()
                    if not status[0].startswith("200"):
                        failures.append((status[0], answer[:200]))

            workers = [threading.Thread(target=worker) for _ in range(threads)]
            for t in workers:
                t.start()
            for t in workers:
                t.join()

        drive(environs(0, 300))  # warm-up: prepared statements, caches, the first partition's pages
        todo = environs(300, n)
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            def backends() -> float:
                return backends_cpu(admin, name)

            time.sleep(0.5)
            spy = None
            if profile:
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(os.getpid()), "--gil", "--nonblocking", "-r", "500", "-f", "raw",
                                        "-o", profile], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            def pg_switches() -> int:
                pids = [r[0] for r in admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))]
                return sum(_switches(p) for p in pids if os.path.exists(f"/proc/{p}"))

            sw0, pgsw0 = _own_switches(), pg_switches()
            sys0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
            pg0, cpu0, started = backends(), time.process_time(), time.monotonic()
            drive(todo)
            elapsed = time.monotonic() - started
            time.sleep(0.3)  # the live-stream publisher's last batch
            cpu = time.process_time() - cpu0
            pg = backends() - pg0
            switches, pg_sw = _own_switches() - sw0, pg_switches() - pgsw0
            if spy is not None:
                spy.send_signal(2)
                spy.wait(60)
            if failures:
                raise SystemExit(f"{len(failures)} requests failed, e.g. {failures[0]}")
            return {"api_us": cpu / n * 1e6, "postgres_us": pg / n * 1e6, "rate": n / elapsed,
                    "system_us": (resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0) / n * 1e6,
                    "switches": switches / n, "pg_switches": pg_sw / n}

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="another checkout (its envoi package) to compare against")
    parser.add_argument("--kind", default="urlencoded", choices=["urlencoded", "multipart", "attachment", "mime"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--profile", help="py-spy the (first round's) new child into this raw file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.kind, args.n, args.threads, args.profile)))
        return
    trees = ab_children.checkouts(args.baseline)

    def child_args(label: str, r: int) -> list[str]:
        extra = ["--profile", args.profile] if args.profile and label == "new" and r == 0 else []
        return ["--kind", args.kind, "--n", str(args.n), "--threads", str(args.threads), *extra]

    results = ab_children.run_rounds(__file__, trees, args.rounds, child_args)
    ab_children.print_medians(results, f"{args.kind}: medians over {args.rounds} rounds, per message")

if __name__ == "__main__":
    main()
