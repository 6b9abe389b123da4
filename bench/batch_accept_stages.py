"""Where one batch send's accept goes, stage by stage: CPU per recipient of each stage, in one process.

    .venv/bin/python bench/batch_accept_stages.py [--baseline /tmp/envoi-base] [--rounds 4] [--batches 6]

Each round runs a child process per code tree (this checkout, then the baseline's, alternating which goes
first): a fresh migrated database, runtime.build(), one verified domain, then `batches` POST bodies of
1,000 recipients as bench/relay_vs_postfix.py's `batch` path sends them (urlencoded: from, to, subject,
~5 KB text with %recipient.name%, o:tag, recipient-variables), after one of warm-up and the heap settled
as an API worker's is (envoi.infra.heap), each taken through
the API's own steps one after another in one thread: `read_form` on a falcon Request (form), the
recipient-variables JSON alone (rv_json: compose parses it again, inside `compose`), `compose` (the
copies filled per recipient), `Intake.prepare` (checks, renderers, the rows: sealed bodies, accepted
events), then the group commit's write (`Intake.accept` minus prepare: COPYs, commit, the live stream
handed its events). Printed per recipient, in µs: each stage's CPU of the calling thread, the other
threads' CPU over the whole batch (`others`: the live-stream publisher's EVAL), the database's Postgres
backends' CPU over the batch, and its WAL bytes (the whole cluster's). No HTTP server, auth or relay.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ab_children  # noqa: E402
from bench_domain import backends_cpu, scratch_services, verified_domain, wal_position  # noqa: E402

ADMIN = os.environ.get("ENVOI_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("ENVOI_BENCH_REDIS", "redis://127.0.0.1:6379/13")
STAGES = ("form", "rv_json", "compose", "prepare", "write")


def post_body(domain: str, b: int, size: int) -> bytes:
    """The body relay_vs_postfix_lib.inject_batch posts."""
    line = "Hello %recipient.name%, thank you for your order. Your parcel is on its way.\r\n"
    text = line * (5000 // len(line) + 1)
    rcpts = [f"b{b}r{i}@d{i % 1000:03d}.example.net" for i in range(size)]
    variables = {r: {"name": f"Customer {i}", "id": i} for i, r in enumerate(rcpts)}
    fields = {"from": f"Bench <bench@{domain}>", "to": ",".join(rcpts), "subject": "Your order, %recipient.name%",
              "text": text, "o:tag": "bench", "recipient-variables": json.dumps(variables)}
    return urllib.parse.urlencode(fields).encode()


def child(batches: int, size: int, profile: str | None, stub_bodies: bool = False) -> dict:
    import falcon
    import psycopg

    from envoi.api.forms import read_form
    from envoi.infra.heap import settle_heap
    from envoi.mta import substitution
    from envoi.mta.compose import compose

    with scratch_services(ADMIN, REDIS) as (name, settings, svc):
        domain_name = f"{uuid.uuid4().hex[:8]}.example.test"
        account, domain = verified_domain(svc.accounts, domain_name, f"bench-{uuid.uuid4().hex[:6]}")
        principal = _Principal(account["id"])
        bodies = [post_body(domain_name, b, size) for b in range(batches + 1)]
        if stub_bodies:  # a measurement only: each copy's body stored as 64 bytes, not its ~5 KB sealed MIME
            seal = svc.intake.sealer.seal
            svc.intake.sealer.seal = lambda plaintext, context=b"": seal(plaintext[:36], context)
        settle_heap()  # as every API worker does once started (envoi.wsgi)

        def send(data: bytes, spent: dict) -> None:
            env = {"REQUEST_METHOD": "POST", "PATH_INFO": f"/v3/{domain_name}/messages", "QUERY_STRING": "",
                   "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8025", "SERVER_PROTOCOL": "HTTP/1.1",
                   "CONTENT_TYPE": "application/x-www-form-urlencoded", "CONTENT_LENGTH": str(len(data)),
                   "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(data), "wsgi.errors": sys.stderr}
            t0 = time.thread_time()
            fields, files = read_form(falcon.Request(env))
            t1 = time.thread_time()
            substitution.load(fields["recipient-variables"][-1], "'recipient-variables' parameter")
            t2 = time.thread_time()
            draft = compose(domain_name, fields, [], [], max_bytes=settings.max_message_bytes)
            draft.method = "http"
            t3 = time.thread_time()
            prepare = svc.intake.prepare
            clock = [0.0]

            def timed_prepare(*args):  # accept() calls prepare first: its share is told apart from the write's
                p0 = time.thread_time()
                try:
                    return prepare(*args)
                finally:
                    clock[0] = time.thread_time() - p0

            svc.intake.prepare = timed_prepare
            try:
                t4 = time.thread_time()
                svc.intake.accept(principal, domain, draft)
                t5 = time.thread_time()
            finally:
                del svc.intake.prepare
            for stage, spent_s in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, clock[0], t5 - t4 - clock[0]), strict=True):
                spent[stage] = spent.get(stage, 0.0) + spent_s

        send(bodies[0], {})  # warm-up: prepared statements, caches, the first partition's pages
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            def backends() -> float:
                return backends_cpu(admin, name)

            def wal() -> int:
                return wal_position(admin)

            time.sleep(0.5)
            spy = None
            if profile:
                import subprocess
                spy_bin = Path(sys.executable).with_name("py-spy")
                spy = subprocess.Popen([str(spy_bin) if spy_bin.exists() else "py-spy", "record", "--pid", str(os.getpid()), "--gil", "--nonblocking", "-r", "500",
                                        "-f", "raw", "-o", profile], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            spent: dict[str, float] = {}
            pg0, wal0, proc0, started = backends(), wal(), time.process_time(), time.monotonic()
            thread0 = time.thread_time()
            for data in bodies[1:]:
                send(data, spent)
            elapsed = time.monotonic() - started
            thread = time.thread_time() - thread0
            time.sleep(0.3)  # the live-stream publisher's last batch
            others = time.process_time() - proc0 - thread
            pg, wal_bytes = backends() - pg0, wal() - wal0
            if spy is not None:
                spy.send_signal(2)
                spy.wait(60)
            n = batches * size
            return {**{f"{s}_us": spent[s] / n * 1e6 for s in STAGES}, "others_us": others / n * 1e6,
                    "postgres_us": pg / n * 1e6, "wal_bytes": wal_bytes / n, "rate": n / elapsed}


class _Principal:
    def __init__(self, account_id: int):
        self.account_id = account_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="another checkout (its envoi package) to compare against")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--profile", help="py-spy (--gil: the thread holding the GIL) the first round's new child into this raw file")
    parser.add_argument("--stub-bodies", action="store_true",
                        help="this checkout's children store each copy's body as 64 bytes (its first 36, sealed)"
                             " instead of its whole sealed MIME; with --baseline . : what the ~5 KB sealed body per"
                             " recipient costs (one body shared by a batch's copies would leave about that per"
                             " recipient); a measurement, not a send")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.batches, args.size, args.profile, args.stub_bodies)))
        return
    trees = ab_children.checkouts(args.baseline)

    def child_args(label: str, r: int) -> list[str]:
        extra = ["--profile", args.profile] if args.profile and label == "new" and r == 0 else []
        return ["--batches", str(args.batches), "--size", str(args.size), *extra,
                *(["--stub-bodies"] if args.stub_bodies and label == "new" else [])]

    results = ab_children.run_rounds(__file__, trees, args.rounds, child_args)
    ab_children.print_medians(results, f"medians over {args.rounds} rounds, per recipient (µs)")


if __name__ == "__main__":
    main()
