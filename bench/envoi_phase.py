"""One Envoi phase of relay_vs_postfix, repeated, for A/B work: rate and CPU per message of everything.

    .venv/bin/python bench/envoi_phase.py [--via smtp|http] [--n 8000] [--reps 2] [--smtp-processes 1]
        [--env NAME=VALUE ...]

Starts one private Envoi region relaying to Postfix's smtp-sink (as relay_vs_postfix does, without
Postfix), warms it with 1,000 messages, then injects N messages --reps times with the same injector
as relay_vs_postfix. Per repetition it prints the end-to-end rate, the machine's busy CPU per message
(/proc/stat: every process, the injector and the sink included, which is what bounds the rate when
the cores are saturated), each Envoi process's CPU per message and its Postgres backends'. --env sets
Envoi settings (e.g. ENVOI_INTAKE_COMMIT_DELAY=0). No ratio: compare two invocations run back to back.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_vs_postfix_lib import EnvoiStack, SmtpSink, cpu_seconds, inject_http, inject_smtp, make_messages  # noqa: E402


def machine_cpu() -> tuple[int, int]:
    """(all jiffies, idle + iowait jiffies) since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values), values[3] + values[4]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--via", choices=("smtp", "http"), default="smtp")
    parser.add_argument("--n", type=int, default=8000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=20, help="SMTP injection sessions")
    parser.add_argument("--http-concurrency", type=int, default=16)
    parser.add_argument("--smtp-processes", type=int, default=1)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    workdir = Path(tempfile.mkdtemp(prefix="envoi-bench-"))
    sink = SmtpSink(workdir).start()
    envoi = EnvoiStack(workdir, sink.port, smtp_processes=args.smtp_processes, extra_env=extra)
    envoi.setup().start()

    def inject(messages) -> None:
        if args.via == "smtp":
            inject_smtp(envoi.smtp_port, messages, args.sessions, auth=(envoi.smtp_login, envoi.smtp_password),
                        starttls=True)
        else:
            inject_http(envoi.api_port, envoi.api_key, messages, args.http_concurrency)

    try:
        inject(make_messages(1000, f"warm-{uuid.uuid4().hex[:6]}"))
        expected = sink.wait_count(1000) and 1000
        hz = os.sysconf("SC_CLK_TCK")
        print(f"# envoi_phase: via {args.via}, n={args.n}, smtp processes {args.smtp_processes}, env {extra or '-'}")
        for _ in range(args.reps):
            envoi.vacuum()
            messages = make_messages(args.n, f"ab-{uuid.uuid4().hex[:6]}")
            split0 = {name: cpu_seconds([p.pid]) for name, p in envoi.procs.items()}
            pg0 = envoi.postgres_cpu()
            all0, idle0 = machine_cpu()
            started = time.time()
            inject(messages)
            expected += args.n
            finished = sink.wait_count(expected)
            all1, idle1 = machine_cpu()
            busy = ((all1 - all0) - (idle1 - idle0)) / hz
            split = ", ".join(f"{name} {(cpu_seconds([p.pid]) - split0[name]) * 1000 / args.n:.2f}"
                              for name, p in envoi.procs.items())
            print(f"{args.n / (finished - started):.0f} msg/s end to end; machine {busy * 1000 / args.n:.2f} ms/msg"
                  f" ({100 * busy / (finished - started) / os.cpu_count():.0f}% busy); {split},"
                  f" postgres {(envoi.postgres_cpu() - pg0) * 1000 / args.n:.2f}", flush=True)
    finally:
        envoi.stop()
        sink.stop()


if __name__ == "__main__":
    main()
