"""CPU per accepted message of one intake edge, alone: `envoi api` (HTTP) or `envoi smtp` (SMTP).

    .venv/bin/python bench/intake_cpu.py --edge smtp [--n 3000] [--processes 1]
    .venv/bin/python bench/intake_cpu.py --edge http [--n 3000] [--api-workers 2 --api-threads 8]
    .venv/bin/python bench/intake_cpu.py --edge http --billing capped  # with plans' quotas at accept

A private region (own database and Redis db) with only that edge running (no relay: accepted mail
just queues), the same ~5 KB messages as bench/relay_vs_postfix.py, 300 messages of warm-up, then
n messages from 20 SMTP sessions (STARTTLS + AUTH) or 16 HTTP clients (/messages.mime). Prints the
accept rate and, per message, the edge's CPU (its processes and children), its Postgres backends'
CPU and the injector's own CPU. Useful for A/B comparisons of intake changes: the end-to-end
benchmark mixes in the relay and is noisier.
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
from relay_vs_postfix_lib import EnvoiStack, cpu_seconds, inject_http, inject_smtp, make_messages  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edge", choices=["smtp", "http"], required=True)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--processes", type=int, default=1, help="envoi smtp --processes")
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--api-threads", type=int, default=8)
    parser.add_argument("--billing", choices=["off", "capped", "overage"], default="off",
                        help="ENVOI_BILLING on, every account on a plan with caps too high to reach (capped: each"
                             " accept pays the quota check, one Redis script call) or on a plan that sells overage"
                             " (no cap: the check returns at once)")
    args = parser.parse_args()
    os.environ["ENVOI_BILLING"] = "off" if args.billing == "off" else "on"  # the edge processes inherit it
    if args.billing != "off":
        plans = Path(tempfile.mkdtemp(prefix="envoi-plans-")) / "plans.toml"
        plans.write_text("[plans.free]\nincluded_per_month = 1000000000\n" + (
            "daily_cap = 1000000000\n" if args.billing == "capped" else "overage_per_1000 = 100\n"))
        os.environ["ENVOI_BILLING_PLANS"] = str(plans)
    name = "smtp" if args.edge == "smtp" else "api"
    envoi = EnvoiStack(Path(tempfile.mkdtemp(prefix="envoi-intake-")), sink_port=9, processes=(name,),
                       smtp_processes=args.processes, api_workers=args.api_workers, api_threads=args.api_threads)
    envoi.setup().start()

    def inject(messages) -> float:
        if args.edge == "smtp":
            return inject_smtp(envoi.smtp_port, messages, 20, auth=(envoi.smtp_login, envoi.smtp_password),
                               starttls=True)
        seconds, errors = inject_http(envoi.api_port, envoi.api_key, messages, 16)
        if errors:
            raise SystemExit(f"{errors} requests failed")
        return seconds

    try:
        inject(make_messages(300, "warm"))
        pids = [p.pid for p in envoi.procs.values()]
        cpu0, pg0, injector0 = cpu_seconds(pids), envoi.postgres_cpu(), time.process_time()
        seconds = inject(make_messages(args.n, "cpu" + uuid.uuid4().hex[:6]))
        per = 1000 / args.n
        print(f"{args.edge} (billing {args.billing}): {args.n} messages accepted at {args.n / seconds:.0f} msg/s;"
              f" cpu ms/msg: {name} {(cpu_seconds(pids) - cpu0) * per:.2f},"
              f" postgres {(envoi.postgres_cpu() - pg0) * per:.2f}, injector {(time.process_time() - injector0) * per:.2f}")
    finally:
        envoi.stop()


if __name__ == "__main__":
    main()
