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
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_accept_cpu import app_under_test  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="urlencoded", choices=["urlencoded", "multipart", "attachment", "mime"])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", help="also dump the pstats data here")
    args = parser.parse_args()

    with app_under_test(args.kind) as (app, _, environs):
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


if __name__ == "__main__":
    main()
