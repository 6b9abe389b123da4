"""CPU of one group commit's write (Intake._write) by batch size, in one process, against another checkout.

    .venv/bin/python bench/intake_write_cpu.py [--baseline /tmp/envoi-base] [--rounds 4] [--n 2400] [--sizes 1,4,8]
        [--connections 10 --cold]

Each round runs a child process per code tree (this checkout, then the baseline's, alternating which goes
first): a fresh migrated database, runtime.build() as `envoi api` builds it, one verified domain, and `n`
messages of bench/api_accept_cpu.py's urlencoded fields composed and prepared (Intake.prepare) before the
clock starts. Then, per batch size k, the messages are written k at a time by Intake._write from one
thread (what the group commit's writer runs: the rows, events, stats, outbox, commit, the listeners and
the doorbell). Printed per size and message: the process's CPU (all threads: the live-stream publisher,
the doorbell), the writing thread's own, and its Postgres backends' CPU. The batch's fixed cost is what does not fall with k.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ab_children  # noqa: E402
from api_accept_cpu import ADMIN, REDIS, TEXT  # noqa: E402
from bench_domain import backends_cpu, scratch_services, verified_domain  # noqa: E402


def child(n: int, sizes: list[int], connections: int = 0, cold: bool = False) -> dict:
    import psycopg

    from envoi.mta.compose import compose

    out = {}
    with scratch_services(ADMIN, REDIS) as (name, _settings, svc):
        domain = f"{uuid.uuid4().hex[:8]}.example.test"
        _, row = verified_domain(svc.accounts, domain, f"bench-{uuid.uuid4().hex[:6]}")
        run = uuid.uuid4().hex[:8]

        def prepared(first: int, count: int) -> list:
            return [svc.intake.prepare(row, compose(domain, {
                "from": [f"Bench <bench@{domain}>"], "to": [f"rcpt{i}@d{i % 1000:03d}.example.net"],
                "subject": [f"Bench message {i}"], "text": [TEXT], "o:tag": [run]}, [], []))
                for i in range(first, first + count)]

        def write(accepts: list, k: int) -> None:
            for at in range(0, len(accepts), k):
                svc.intake._write([a.stored for a in accepts[at:at + k]])

        if connections:  # the pool hands its connections out in turn: as many as an API process's
            svc.db.pool.resize(connections, connections)
            svc.db.pool.wait()
        if not cold:
            write(prepared(0, 200), 4)  # warm-up: prepared statements, the partition's first pages
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            def backends() -> float:
                return backends_cpu(admin, name)

            for k in sizes:
                todo = prepared(1000 + k * n, n)
                if not cold:
                    write(prepared(500 + k * 100, 4 * k), k)  # this size's statements prepared
                time.sleep(0.3)
                pg0, cpu0, own0 = backends(), time.process_time(), time.thread_time()
                write(todo, k)
                own = time.thread_time() - own0
                time.sleep(0.3)  # the live-stream publisher's last batch
                cpu, pg = time.process_time() - cpu0, backends() - pg0
                out[f"k{k} api_us"] = cpu / n * 1e6
                out[f"k{k} writer_us"] = own / n * 1e6
                out[f"k{k} pg_us"] = pg / n * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="another checkout (its envoi package) to compare against")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--n", type=int, default=2400)
    parser.add_argument("--sizes", default="1,4,8")
    parser.add_argument("--connections", type=int, default=0,
                        help="open the pool at this many connections (handed out in turn, as in a busy API)")
    parser.add_argument("--cold", action="store_true",
                        help="no warm-up writes: the statements' parsing and planning on each connection count")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child:
        print(json.dumps(child(args.n, sizes, args.connections, args.cold)))
        return
    results = ab_children.run_rounds(__file__, ab_children.checkouts(args.baseline), args.rounds,
                                     lambda label, r: ["--n", str(args.n), "--sizes", args.sizes,
                                                       "--connections", str(args.connections)]
                                     + (["--cold"] if args.cold else []))
    ab_children.print_medians(results, f"Intake._write: medians over {args.rounds} rounds, per message")


if __name__ == "__main__":
    main()
