"""What the quota check at accept costs, A/B in one run: billing off against plans with caps.

    .venv/bin/python bench/quota_ab.py [--edge http|smtp] [--rounds 8] [--n 1000]

Three private regions run side by side, each with only its intake edge (`envoi api` or `envoi smtp`):
billing off; billing on with every account on a plan whose caps are too high to reach (each accept runs
the quota check, one Redis script); billing on with a plan that sells overage (the check returns at
once). Each round injects the same n messages (~5 KB, as bench/relay_vs_postfix.py) into the three in
turn, the order rotating every round, and records each edge's CPU per message (its processes and their
Postgres backends) and its accept rate. Rounds are short and interleaved, so the machine's drift (which
moves single runs by tens of percent on this VM) falls on all three alike; the figure is the median over
rounds of each variant's ratio to "off" in the same round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_vs_postfix_lib import EnvoiStack, cpu_seconds, inject_http, inject_smtp, make_messages  # noqa: E402

PLANS = {
    "capped": "[plans.free]\nincluded_per_month = 1000000000\ndaily_cap = 1000000000\n",
    "overage": "[plans.free]\nincluded_per_month = 1000000000\noverage_per_1000 = 100\n",
}


def variant_env(variant: str) -> dict:
    if variant == "off":
        return {"ENVOI_BILLING": "off"}
    plans = Path(tempfile.mkdtemp(prefix="envoi-plans-")) / "plans.toml"
    plans.write_text(PLANS[variant])
    return {"ENVOI_BILLING": "on", "ENVOI_BILLING_PLANS": str(plans)}


def counted_by_quota(stack: EnvoiStack) -> int:
    import redis

    conn = redis.Redis.from_url(stack.redis_url)
    return sum(int(conn.get(key) or 0) for key in conn.scan_iter("envoi:*:quota:*:day:*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edge", choices=["smtp", "http"], default="http")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    name = "smtp" if args.edge == "smtp" else "api"
    variants = ("off", "capped", "overage")
    stacks = {v: EnvoiStack(Path(tempfile.mkdtemp(prefix=f"envoi-quota-{v}-")), sink_port=9, processes=(name,),
                            extra_env=variant_env(v)) for v in variants}

    def inject(stack: EnvoiStack, messages) -> float:
        if args.edge == "smtp":
            return inject_smtp(stack.smtp_port, messages, 20, auth=(stack.smtp_login, stack.smtp_password),
                               starttls=True)
        seconds, errors = inject_http(stack.api_port, stack.api_key, messages, 16)
        if errors:
            raise SystemExit(f"{errors} requests failed")
        return seconds

    try:
        for stack in stacks.values():
            stack.setup().start()
            inject(stack, make_messages(300, "warm"))
        cpu = {v: [] for v in variants}
        rate = {v: [] for v in variants}
        for r in range(args.rounds):
            order = variants[r % 3:] + variants[:r % 3]
            for v in order:
                stack = stacks[v]
                messages = make_messages(args.n, f"q{r}{v}" + uuid.uuid4().hex[:4])
                pids = [p.pid for p in stack.procs.values()]
                cpu0, pg0 = cpu_seconds(pids), stack.postgres_cpu()
                seconds = inject(stack, messages)
                cpu[v].append((cpu_seconds(pids) - cpu0 + stack.postgres_cpu() - pg0) * 1000 / args.n)
                rate[v].append(args.n / seconds)
            print(f"round {r + 1} ({' '.join(order)}): " + ", ".join(
                f"{v} {cpu[v][-1]:.2f} ms/msg {rate[v][-1]:.0f} msg/s" for v in variants), flush=True)
            time.sleep(0.5)
        counted = counted_by_quota(stacks["capped"])
        expected = 300 + args.rounds * args.n
        if counted != expected:  # the check must really have run on every accept of the capped region
            raise SystemExit(f"capped region's quota counters hold {counted}, not {expected}")
        print(f"\n{args.edge}, {args.rounds} rounds of {args.n} messages per variant (median of same-round ratios to off):")
        for v in variants[1:]:
            cpu_ratio = statistics.median(c / o for c, o in zip(cpu[v], cpu["off"], strict=True))
            rate_ratio = statistics.median(x / o for x, o in zip(rate[v], rate["off"], strict=True))
            print(f"  {v:8s} cpu per message {100 * (cpu_ratio - 1):+.1f}%, accept rate {100 * (rate_ratio - 1):+.1f}%"
                  f"  (medians: {statistics.median(cpu[v]):.2f} ms/msg against {statistics.median(cpu['off']):.2f};"
                  f" {statistics.median(rate[v]):.0f} msg/s against {statistics.median(rate['off']):.0f})")
    finally:
        for stack in stacks.values():
            stack.stop()


if __name__ == "__main__":
    main()
