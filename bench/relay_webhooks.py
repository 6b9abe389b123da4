"""End-to-end relay throughput with and without tracking + `delivered` webhooks (issue 18), beside Postfix +
OpenDKIM (SMTP submission and /messages.mime). bench/relay_vs_postfix.py covers every send path.

    sudo .venv/bin/python bench/relay_webhooks.py [--n 20000] [--rounds 1] [--sessions 20] [--skip-postfix]
        [--baseline CHECKOUT]

Self-contained: installs Debian's postfix and opendkim if missing; starts Postfix's `smtp-sink`
(counting) as the one sink; configures Postfix (relayhost = the sink) with an OpenDKIM milter
(RSA-2048, unix socket); starts a private Envoi region (own database and Redis db; `envoi relay`
with ENVOI_SMTP_ROUTE = the sink, `envoi smtp`, `envoi api`; domain key RSA-2048). The same N
messages (~5 KB, 1,000 recipient domains) go (a) into Postfix over SMTP, (b) into Envoi over SMTP
submission (STARTTLS + AUTH), (c) into Envoi's HTTP API (/messages.mime); each phase is timed from
the first injection until the sink has counted every message. Prints msg/s and the ratios, then
the accept->delivered p50/p99 of (c) at half its measured rate. With --rounds N the three phases
run N times (Postfix restarted each round, Envoi kept running) and the median ratios are printed:
this machine drifts, so one round is one sample. Envoi is warmed with 1,000 messages (and its queue
tables analyzed, as before every phase) before the first measurement. With --baseline CHECKOUT (a
checkout of another revision, e.g. `git worktree add /tmp/envoi-base HEAD~1`) a second region runs that
revision's code (its processes and its setup import that tree) through the same phases in every round,
the two taking turns going first, and its ratios against the same Postfix phase are printed too.
With --webhooks a second region of this checkout runs beside the first, with open and click tracking
on, `delivered` subscribed to a local receiver (bench/webhook_receiver.py, its own process, checking
every signature) and `envoi webhooks dispatch` running: same phases, taking turns, and its delivery
rate is printed against the plain region's of the same round, with the delivered -> webhook received
p50/p99 while the relay runs at its maximum (each such phase also waits for every webhook to arrive).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_vs_postfix_lib import (  # noqa: E402
    ROOT,
    EnvoiStack,
    PostfixStack,
    SmtpSink,
    cpu_seconds,
    free_port,
    inject_http,
    inject_smtp,
    log,
    make_messages,
    percentile,
)


def phase(name: str, sink: SmtpSink, n: int, inject) -> dict:
    base = sink.count()
    log(f"{name}: injecting {n} messages")
    t0 = time.time()
    injector0 = time.process_time()  # the injector runs in this process: its CPU competes too
    inject_seconds = inject()
    injector_ms = (time.process_time() - injector0) * 1000 / n
    t1 = sink.wait_count(base + n)
    e2e = t1 - t0
    result = {"name": name, "n": n, "inject_s": inject_seconds, "e2e_s": e2e, "rate": n / e2e,
              "accept_rate": n / inject_seconds, "injector_ms": injector_ms}
    log(f"{name}: accepted in {inject_seconds:.1f}s ({n / inject_seconds:.0f} msg/s), "
        f"end to end {e2e:.1f}s ({n / e2e:.0f} msg/s)")
    return result


def postfix_phase(args, workdir: Path, sink: SmtpSink, name: str) -> dict:
    postfix = PostfixStack(workdir, sink.port, concurrency=args.connections).start()
    try:
        messages = make_messages(args.n, f"pf-{uuid.uuid4().hex[:6]}")
        cpu0 = cpu_seconds(postfix.pids())
        result = phase(name, sink, args.n, lambda: inject_smtp(postfix.port, messages, args.sessions))
        result["cpu_ms"] = (cpu_seconds(postfix.pids()) - cpu0) * 1000 / args.n
        return result
    finally:
        postfix.stop()


def envoi_phase(envoi: EnvoiStack, sink: SmtpSink, name: str, n: int, inject) -> dict:
    """phase() plus the CPU per message of each Envoi process and of its Postgres backends."""
    envoi.vacuum()
    pids = [p.pid for p in envoi.procs.values()]
    split0 = {proc: cpu_seconds([p.pid]) for proc, p in envoi.procs.items()}
    xacts0 = envoi.transactions()
    cpu0, pg0 = cpu_seconds(pids), envoi.postgres_cpu()
    result = phase(name, sink, n, inject)
    result["cpu_ms"] = (cpu_seconds(pids) - cpu0) * 1000 / n
    result["pg_ms"] = (envoi.postgres_cpu() - pg0) * 1000 / n
    result["xacts"] = (envoi.transactions() - xacts0) / n
    result["split"] = {proc: (cpu_seconds([p.pid]) - split0[proc]) * 1000 / n for proc, p in envoi.procs.items()}
    return result


class Receiver:
    """bench/webhook_receiver.py in its own process: counts webhooks, checks signatures, latency."""

    def __init__(self, workdir: Path, key: str, port: int):
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "keys.json").write_text(json.dumps({"*": key}))
        self.port, slow = port, free_port()
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parent / "webhook_receiver.py"),
                                      str(self.port), str(slow), str(workdir / "keys.json")],
                                     stdout=(workdir / "receiver.log").open("wb"), stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            try:
                self.stats()
                return
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as resp:
            return json.loads(resp.read())

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{self.port}/reset", method="POST"),
                               timeout=10)

    def wait(self, total: int, timeout: float = 600) -> float:
        deadline = time.time() + timeout
        while self.stats()["received"] < total:
            if time.time() > deadline:
                raise SystemExit(f"the receiver got {self.stats()['received']} webhooks of {total}")
            time.sleep(0.05)
        return time.time()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start_envoi(args, workdir: Path, sink: SmtpSink, root: Path, webhooks: bool = False) -> EnvoiStack:
    envoi = EnvoiStack(workdir, sink.port, relay_connections=args.connections, api_workers=args.api_workers,
                       api_threads=args.api_threads, smtp_processes=args.smtp_processes, root=root)
    if webhooks:
        # The receiver needs the signing key the setup makes, the setup the receiver's URL: a port first.
        port = free_port()
        envoi.webhook_url = f"http://127.0.0.1:{port}/hook"
        envoi.processes = (*envoi.processes, "dispatch")
        envoi.extra_env = {"ENVOI_WEBHOOK_ALLOW": "127.0.0.1/32"}
        envoi.setup()
        envoi.receiver = Receiver(workdir / "receiver", envoi.signing_key, port)
        envoi.start()
    else:
        envoi.setup().start()
    # Warm-up: a fresh database's first plans are made for empty tables (a sequential scan of messages
    # per foreign-key check); in production autovacuum's ANALYZE replaces them within a minute, but
    # this machine runs Postgres with autovacuum off, so fill and analyze first.
    base = sink.count()
    inject_http(envoi.api_port, envoi.api_key, make_messages(1000, f"warm-{uuid.uuid4().hex[:6]}"),
                args.http_concurrency)
    sink.wait_count(base + 1000)
    if webhooks:
        envoi.receiver.wait(1000)
    return envoi


def envoi_phases(args, envoi: EnvoiStack, sink: SmtpSink, label: str, system: str) -> dict:
    """The SMTP submission and HTTP API phases of one region; keys "smtp"/"http", "baseline smtp"/…"""
    key = "" if system == "envoi" else f"{system} "
    this = {}
    if not args.skip_smtp:
        messages = make_messages(args.n, f"smtp-{uuid.uuid4().hex[:6]}")
        this[f"{key}smtp"] = envoi_phase(envoi, sink, f"{label} (smtp submission)", args.n, functools.partial(
            inject_smtp, envoi.smtp_port, messages, args.sessions,
            auth=(envoi.smtp_login, envoi.smtp_password), starttls=True))
    run = f"http-{uuid.uuid4().hex[:6]}"
    messages = make_messages(args.n, run)
    receiver = getattr(envoi, "receiver", None)
    if receiver is not None:
        receiver.reset()
        base = receiver.stats()["received"]
    this[f"{key}http"] = result = envoi_phase(envoi, sink, f"{label} (http api)", args.n, lambda: inject_http(
        envoi.api_port, envoi.api_key, messages, args.http_concurrency)[0])
    lat = envoi.latencies(run)
    result["p50"], result["p99"] = percentile(lat, 50), percentile(lat, 99)
    if receiver is not None:  # every webhook in before the next phase (no work carried into it)
        done = time.time()
        caught_up = receiver.wait(base + args.n)
        got = receiver.stats()
        # Outbox row made (the relay's outcome transaction) -> its result written after the receiver's
        # 200: an upper bound of event committed -> webhook received. The receiver's own figure starts
        # at the event's timestamp (the sink's reply), before the relay's batched write.
        with envoi.connect() as conn:
            rows = conn.execute(
                "SELECT extract(epoch FROM finished_at - created_at) AS s FROM webhook_deliveries"
                " WHERE status = 'delivered' AND payload->'message'->'headers'->>'message-id' LIKE %s",
                (f"{run}.%",)).fetchall()
        committed = [float(r["s"]) for r in rows]
        result["webhooks"] = {"p50": got["p50"], "p99": got["p99"], "max": got["max"], "invalid": got["invalid"],
                              "duplicates": got["received"] - got["distinct"], "after_s": caught_up - done,
                              "commit_p50": percentile(committed, 50), "commit_p99": percentile(committed, 99),
                              "commit_n": len(committed)}
        log(f"{label} (http api): delivered -> webhook received p50 {got['p50'] * 1000:.0f} ms, p99"
            f" {got['p99'] * 1000:.0f} ms, max {got['max'] * 1000:.0f} ms; outbox row committed -> result written"
            f" p50 {percentile(committed, 50) * 1000:.0f} ms, p99 {percentile(committed, 99) * 1000:.0f} ms"
            f" ({len(committed)} rows); the last webhook {caught_up - done:.1f} s after the last message;"
            f" invalid signatures {got['invalid']}")
    return this


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the three phases; ratios are per round, and their medians are printed")
    parser.add_argument("--sessions", type=int, default=20, help="SMTP injection sessions")
    parser.add_argument("--http-concurrency", type=int, default=16)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--api-threads", type=int, default=8)
    parser.add_argument("--smtp-processes", type=int, default=1, help="envoi smtp --processes")
    parser.add_argument("--connections", type=int, default=50,
                        help="sessions to the sink for both relays (Envoi ENVOI_RELAY_CONNECTIONS; Postfix"
                             " default_destination_concurrency_limit)")
    parser.add_argument("--skip-postfix", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-smtp", action="store_true", help="leave out Envoi's SMTP submission phase")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="also run Envoi from this checkout of another revision (e.g. a git worktree of the"
                             " previous commit) in every round, against the same Postfix phase; the two take"
                             " turns going first, and both sets of ratios are printed")
    parser.add_argument("--webhooks", action="store_true",
                        help="also run a region with tracking on, `delivered` webhooks to a local receiver and the"
                             " dispatcher, taking turns with the plain one; its rate against the plain one's")
    args = parser.parse_args()
    # Envoi's CPU per message depends on how many messages share a transaction, which depends on how
    # fast commits return: say what machine, and how busy, this run had.
    log(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    workdir = Path(tempfile.mkdtemp(prefix="envoi-bench-"))
    sink = SmtpSink(workdir).start()
    results, rounds = [], []
    stacks: dict[str, EnvoiStack] = {}  # "envoi": this checkout; "baseline": --baseline's
    try:
        for number in range(1, args.rounds + 1):
            label = f"r{number} " if args.rounds > 1 else ""
            this = {}
            if not args.skip_postfix:
                this["postfix"] = postfix_phase(args, workdir, sink, f"{label}postfix+opendkim (smtp)")
            if not stacks:  # started after the first Postfix phase, as it always was
                roots = {"envoi": ROOT} | ({"baseline": Path(args.baseline).resolve()} if args.baseline else {})
                roots |= {"webhooks": ROOT} if args.webhooks else {}
                for system, root in roots.items():
                    stacks[system] = start_envoi(args, workdir / system, sink, root, webhooks=system == "webhooks")
            # With a baseline, the two take turns going first, round by round (the machine drifts).
            order = list(stacks) if number % 2 else list(reversed(stacks))
            for system in order:
                this.update(envoi_phases(args, stacks[system], sink, f"{label}{system}", system))
            results += list(this.values())
            rounds.append(this)
        envoi = stacks["envoi"]
        if not args.skip_latency:
            rate = statistics.median(r["http"]["rate"] for r in rounds) / 2
            n = min(args.n, max(2000, int(rate * 20)))
            envoi.vacuum()
            run = f"half-{uuid.uuid4().hex[:6]}"
            messages = make_messages(n, run)
            log(f"latency at half the maximum rate: {n} messages at {rate:.0f} msg/s")
            res = phase(f"envoi (http api) paced at {rate:.0f} msg/s", sink, n, lambda: inject_http(
                envoi.api_port, envoi.api_key, messages, args.http_concurrency, rate=rate)[0])
            lat = envoi.latencies(run)
            res["p50"], res["p99"] = percentile(lat, 50), percentile(lat, 99)
            results.append(res)
    finally:
        for stack in stacks.values():
            stack.stop()
            if getattr(stack, "receiver", None) is not None:
                stack.receiver.stop()
        sink.stop()
    print(f"\n# relay_vs_postfix: n={args.n} x ~5 KB, 1,000 recipient domains, {args.sessions} injection sessions, "
          f"{args.connections} relay sessions, "
          f"http concurrency {args.http_concurrency}, DKIM RSA-2048 everywhere")
    print("(cpu ms/msg: the system's own processes; pg: its Postgres backends; injector and sink not counted)")
    print(f"machine: {os.cpu_count()} cores, load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'system':45} {'accept msg/s':>12} {'e2e msg/s':>10} {'cpu ms/msg':>10} {'pg ms/msg':>9} "
          f"{'p50 s':>7} {'p99 s':>7}")
    nan = float("nan")
    for r in results:
        print(f"{r['name']:45} {r['accept_rate']:12.0f} {r['rate']:10.0f} {r.get('cpu_ms', nan):10.2f} "
              f"{r.get('pg_ms', nan):9.2f} {r.get('p50', nan):7.3f} {r.get('p99', nan):7.3f}")
    for r in results:
        if "split" in r:
            print(f"cpu ms/msg by process, {r['name']}: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in r["split"].items()) + f", postgres {r['pg_ms']:.2f}"
                  + f"; postgres transactions/msg {r['xacts']:.3f}")
    for r in results:
        print(f"injector cpu ms/msg, {r['name']}: {r['injector_ms']:.2f}")
    if args.webhooks:
        for kind in ("smtp", "http"):
            ratios = [r[f"webhooks {kind}"]["rate"] / r[kind]["rate"] for r in rounds if kind in r]
            for r in (r for r in rounds if kind in r):
                w = r[f"webhooks {kind}"]
                line = f"RATIO {w['name']} / {r[kind]['name']} = {w['rate'] / r[kind]['rate']:.2f}"
                if "webhooks" in w:
                    h = w["webhooks"]
                    line += (f"; delivered -> webhook received p50 {h['p50'] * 1000:.0f} ms, p99 {h['p99'] * 1000:.0f}"
                             f" ms; outbox row committed -> result written p50 {h['commit_p50'] * 1000:.0f} ms, p99"
                             f" {h['commit_p99'] * 1000:.0f} ms; last {h['after_s']:.1f} s after the last message,"
                             f" invalid {h['invalid']}, duplicates {h['duplicates']}")
                print(line)
            if len(ratios) > 1:
                print(f"MEDIAN RATIO webhooks {kind} / {kind} = {statistics.median(ratios):.2f} over {len(ratios)} rounds")
    if not args.skip_postfix:
        for kind in [f"{system}{kind}" for system in ("", "baseline ") for kind in ("smtp", "http")]:
            ratios = [r[kind]["rate"] / r["postfix"]["rate"] for r in rounds if kind in r]
            for r, ratio in zip((r for r in rounds if kind in r), ratios, strict=True):
                print(f"RATIO {r[kind]['name']} / postfix+opendkim = {ratio:.2f}")
            if len(ratios) > 1:
                print(f"MEDIAN RATIO {kind} / postfix+opendkim = {statistics.median(ratios):.2f}"
                      f" over {len(ratios)} rounds ({', '.join(f'{x:.2f}' for x in ratios)})")


if __name__ == "__main__":
    main()
