"""CPU per recipient of a batch send's compose + accept, in one process, against another checkout.

    .venv/bin/python bench/batch_intake.py [--baseline /tmp/envoi-base] [--rounds 6] [--batches 5] [--size 1000]

Each round runs a child process per code tree (this checkout, then the baseline's, alternating which
goes first): a fresh migrated database (the tree's own migrations), runtime.build(), one verified
domain, then `batches` batch sends of `size` recipients (1,000 domains, recipient-variables, ~5 KB text
with %recipient.name%, as bench/relay_vs_postfix.py's `batch` path posts them) composed and accepted
one after another, after one batch of warm-up. It prints, per recipient: the process's CPU for
compose and for accept (all threads: the live-stream publisher included), the CPU of the database's
Postgres backends, and the database's WAL bytes. No HTTP and no relay: only what a batch costs the
API process and Postgres, so intake changes compare without the end-to-end run's noise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ab_children  # noqa: E402
from bench_domain import backends_cpu, scratch_services, verified_domain, wal_position  # noqa: E402

ADMIN = os.environ.get("ENVOI_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("ENVOI_BENCH_REDIS", "redis://127.0.0.1:6379/13")


def child(batches: int, size: int, body_storage: str | None) -> dict:
    import psycopg

    from envoi.mta.compose import compose

    def storage(dsn: str) -> None:  # to tell the storage's share from the rest's
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE messages ALTER COLUMN body SET STORAGE {body_storage}")

    with scratch_services(ADMIN, REDIS, after_migrate=storage if body_storage else None) as (name, settings, svc):
        domain_name = f"{uuid.uuid4().hex[:8]}.example.test"
        account, domain = verified_domain(svc.accounts, domain_name, f"bench-{uuid.uuid4().hex[:6]}")
        line = "Hello %recipient.name%, thank you for your order. Your parcel is on its way.\r\n"
        text = line * (5000 // len(line) + 1)

        def fields(b: int) -> dict:
            rcpts = [f"b{b}r{i}@d{i:03d}.example.net" for i in range(size)]
            variables = {r: {"name": f"Customer {i}", "id": i} for i, r in enumerate(rcpts)}
            return {"from": [f"Bench <bench@{domain_name}>"], "to": [",".join(rcpts)],
                    "subject": ["Your order, %recipient.name%"], "text": [text], "o:tag": ["bench"],
                    "recipient-variables": [json.dumps(variables)]}

        def send(b: int) -> tuple[float, float]:
            f = fields(b)
            c0 = time.process_time()
            draft = compose(domain_name, f, [], [], max_bytes=settings.max_message_bytes)
            draft.method = "http"
            c1 = time.process_time()
            svc.intake.accept(_Principal(account["id"]), domain, draft)
            return c1 - c0, time.process_time() - c1

        send(0)  # warm-up: prepared statements, caches, the first partition's pages
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            time.sleep(0.5)
            pg0, wal0, started = backends_cpu(admin, name), wal_position(admin), time.monotonic()
            compose_cpu = accept_cpu = 0.0
            for b in range(1, batches + 1):
                c, a = send(b)
                compose_cpu += c
                accept_cpu += a
            elapsed = time.monotonic() - started
            time.sleep(0.3)  # the live-stream publisher's last batch
            n = batches * size
            # WAL of the whole cluster (other engineers' work included): a rough figure on a shared machine.
            return {"compose_us": compose_cpu / n * 1e6, "accept_us": accept_cpu / n * 1e6,
                    "postgres_us": (backends_cpu(admin, name) - pg0) / n * 1e6,
                    "wal_bytes": (wal_position(admin) - wal0) / n, "rate": n / elapsed}


class _Principal:
    def __init__(self, account_id: int):
        self.account_id = account_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="another checkout (its envoi package) to compare against")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--body-storage", choices=["extended", "external", "main"],
                        help="set messages.body's storage in every tree's database (default: as migrated)")
    parser.add_argument("--baseline-body-storage", choices=["extended", "external", "main"],
                        help="the same for the baseline's databases only (with --baseline . : storage alone A/B)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.batches, args.size, args.body_storage)))
        return
    trees = ab_children.checkouts(args.baseline)

    def child_args(label: str, r: int) -> list[str]:
        chosen = args.baseline_body_storage if label == "old" and args.baseline_body_storage else args.body_storage
        return ["--batches", str(args.batches), "--size", str(args.size),
                *(["--body-storage", chosen] if chosen else [])]

    results = ab_children.run_rounds(__file__, trees, args.rounds, child_args)
    ab_children.print_medians(results, f"medians over {args.rounds} rounds, per recipient")

if __name__ == "__main__":
    main()
