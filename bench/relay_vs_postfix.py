"""End-to-end relay throughput: Postfix + OpenDKIM against every Envoi send path, in the same run.

    sudo .venv/bin/python bench/relay_vs_postfix.py [--n 20000] [--rounds 3] [--paths urlencoded,...]
        [--sessions 20] [--http-concurrency 16] [--skip-postfix] [--skip-latency] [--baseline CHECKOUT]
        [--webhooks [--webhook-rate R]]

Self-contained: installs Debian's postfix, opendkim and wrk if missing; starts Postfix's `smtp-sink`
(counting) as the one sink; configures Postfix (relayhost = the sink) with an OpenDKIM milter
(RSA-2048, unix socket); starts a private Envoi region (own database and Redis db; `envoi relay`
with ENVOI_SMTP_ROUTE = the sink, `envoi smtp`, `envoi api`; domain key RSA-2048). Each round sends
N messages (~5 KB, 1,000 recipient domains) into Postfix over SMTP, then through each Envoi path of
--paths: `urlencoded`, `multipart`, `attachment` (form fields to /messages, as urlencoded, as
multipart, multipart plus a ~2 KB attachment) and `mime` (/messages.mime), all posted by wrk (a C
load generator; bench/wrk_messages.lua builds the bodies); `smtp` (submission, STARTTLS + AUTH, the
in-process aiosmtplib injector); `batch` (N / 1000 POSTs of 1,000 recipients with
recipient-variables). Each phase is timed from the first injection until the sink has counted every
accepted message; the injector's own CPU per message is printed next to the system's. Ratios against
the round's Postfix phase are printed per round and as medians over the rounds (this machine drifts:
one round is one sample). Then the accept latency (request -> 200, which comes after the commit)
p50/p99 of the first wrk path, paced at half its median end-to-end rate. Envoi is warmed with 1,000
messages (and its queue tables analyzed, as before every phase) before the first measurement. With
--baseline CHECKOUT (a checkout of another revision, e.g. `git worktree add --detach /tmp/envoi-base
HEAD~1`) a second region runs that revision's code through the same paths in every round, the two
taking turns going first: the A/B of a change in one run.

With --webhooks (issue 18) every message carries a 10-link HTML body beside its text, and a second
region of this checkout runs each path too, taking turns with the plain one: open, click and
unsubscribe tracking on, a `delivered` webhook subscribed to a local receiver in its own process
(bench/webhook_receiver.py, checking every signature) and `envoi webhooks dispatch` running. Its
end-to-end rate (the sink's count, as for every phase) is printed against the plain region's of the
same round, per round and as the median; each such phase then waits for every webhook to arrive (no
work carried into the next phase) and prints delivered -> webhook received p50/p99 and how long after
the last message the last webhook came.

With --webhook-rate R as well (issue 18: "commit -> webhook received p99 < 1 s at 500 webhooks/s while
the relay runs at its maximum"), each phase of the plain region (its relay at its maximum) runs while
`delivered` outbox rows are committed at R/s into the --webhooks region (a batch every 20 ms, its
doorbell rung; the event-data's timestamp is the commit's), which its dispatcher sends to its receiver:
commit -> received p50/p99 of those, per phase, beside the relay's rate of that phase.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_vs_postfix_lib import (  # noqa: E402
    ROOT,
    WRK_KINDS,
    EnvoiStack,
    PostfixStack,
    Receiver,
    SmtpSink,
    cpu_seconds,
    ensure_wrk,
    free_port,
    inject_batch,
    inject_http,
    inject_smtp,
    inject_wrk,
    log,
    make_messages,
    percentile,
)

PATHS = ("urlencoded", "multipart", "attachment", "mime", "smtp", "batch")
# Not in the default run: the batch path with the relay stopped (SIGSTOP) while the POSTs are accepted, then
# resumed to deliver them: the accept rate without the relay's concurrent deliveries (the contention's share).
EXTRA_PATHS = ("batch-paused",)
LABELS = {"urlencoded": "/messages urlencoded", "multipart": "/messages multipart",
          "attachment": "/messages multipart+attachment", "mime": "/messages.mime", "smtp": "smtp submission",
          "batch": "batch 1,000 rcpts + recipient-variables",
          "batch-paused": "batch 1,000 rcpts + recipient-variables, relay stopped while accepting"}


def phase(name: str, sink: SmtpSink, n: int, inject, accepted=None) -> dict:
    """Time one injection until the sink has every message. inject() returns its seconds, or a dict with
    "inject_s" and, for an out-of-process injector, "injector_cpu_s" (plus any figures to keep);
    accepted() says how many messages were accepted (default n)."""
    base = sink.count()
    log(f"{name}: injecting {n} messages")
    t0 = time.time()
    injector0 = time.process_time()  # an in-process injector's CPU competes too
    out = inject()
    out = out if isinstance(out, dict) else {"inject_s": out}
    injector_s = out.pop("injector_cpu_s", None)
    if injector_s is None:
        injector_s = time.process_time() - injector0
    count = accepted() if accepted else n
    t1 = sink.wait_count(base + count)
    e2e = t1 - t0
    inject_seconds = out.pop("inject_s")
    result = {"name": name, "n": count, "inject_s": inject_seconds, "e2e_s": e2e, "rate": count / e2e,
              "accept_rate": count / inject_seconds, "injector_ms": injector_s * 1000 / count, **out}
    log(f"{name}: accepted {count} in {inject_seconds:.1f}s ({count / inject_seconds:.0f} msg/s), "
        f"end to end {e2e:.1f}s ({count / e2e:.0f} msg/s)")
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


def envoi_phase(envoi: EnvoiStack, sink: SmtpSink, name: str, n: int, inject, counted: bool = False) -> dict:
    """phase() plus the CPU per message of each Envoi process and of its Postgres backends. counted: the
    sink waits for the recipients the region accepted (wrk may send a few beyond n)."""
    envoi.vacuum()
    pids = [p.pid for p in envoi.procs.values()]
    split0 = {proc: cpu_seconds([p.pid]) for proc, p in envoi.procs.items()}
    xacts0 = envoi.transactions()
    cpu0, pg0 = cpu_seconds(pids), envoi.postgres_cpu()
    accepted0 = envoi.accepted() if counted else 0
    result = phase(name, sink, n, inject, (lambda: envoi.accepted() - accepted0) if counted else None)
    n = result["n"]
    result["cpu_ms"] = (cpu_seconds(pids) - cpu0) * 1000 / n
    result["pg_ms"] = (envoi.postgres_cpu() - pg0) * 1000 / n
    result["xacts"] = (envoi.transactions() - xacts0) / n
    result["split"] = {proc: (cpu_seconds([p.pid]) - split0[proc]) * 1000 / n for proc, p in envoi.procs.items()}
    return result


def wrk_inject(envoi: EnvoiStack, kind: str, n: int, args, rate: float | None = None):
    def inject() -> dict:
        res = inject_wrk(envoi.api_port, envoi.api_key, kind, n, f"{kind}-{uuid.uuid4().hex[:6]}",
                         connections=args.http_concurrency, threads=args.wrk_threads, rate=rate, html=args.webhooks)
        if res.non2xx or res.socket_errors:
            log(f"{kind}: {res.non2xx} non-2xx answers, {res.socket_errors} socket errors")
        return {"inject_s": res.seconds, "injector_cpu_s": res.injector_cpu_s, "p50_ms": res.p50_ms,
                "p99_ms": res.p99_ms, "errors": res.non2xx + res.socket_errors}
    return inject


def start_envoi(args, workdir: Path, sink: SmtpSink, root: Path, webhooks: bool = False) -> EnvoiStack:
    envoi = EnvoiStack(workdir, sink.port, relay_connections=args.connections, api_workers=args.api_workers,
                       api_threads=args.api_threads, smtp_processes=args.smtp_processes, root=root,
                       extra_env={"ENVOI_API_SERVER": args.api_server} if args.api_server and root == ROOT else {})
    envoi.receiver = None
    if webhooks:
        # The receiver needs the signing key the setup makes, the setup the receiver's URL: a port first.
        port = free_port()
        envoi.webhook_url = f"http://127.0.0.1:{port}/hook"
        envoi.processes = (*envoi.processes, "dispatch")
        envoi.extra_env = {**envoi.extra_env, "ENVOI_WEBHOOK_ALLOW": "127.0.0.1/32"}
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
    if envoi.receiver is not None:
        envoi.receiver.wait(1000)
    return envoi


def with_webhooks(envoi: EnvoiStack, phase_fn):
    """Run a phase of the --webhooks region, then wait for every webhook of it (so the next phase
    carries none of its work) and add the receiver's figures to its result."""
    receiver = envoi.receiver
    if receiver is None:
        return phase_fn()
    receiver.reset()
    base = receiver.stats()["received"]
    with envoi.connect() as conn:
        first = conn.execute("SELECT coalesce(max(id), 0) AS id FROM webhook_deliveries").fetchone()["id"]
    result = phase_fn()
    done = time.time()
    caught_up = receiver.wait(base + result["n"])
    got = receiver.stats()
    result["webhooks"] = h = {"p50": got["p50"], "p99": got["p99"], "max": got["max"], "invalid": got["invalid"],
                              "duplicates": got["received"] - got["distinct"], "after_s": caught_up - done,
                              **breakdown(envoi, first)}
    log(f"{result['name']}: delivered -> webhook received p50 {h['p50'] * 1000:.0f} ms, p99 {h['p99'] * 1000:.0f} ms,"
        f" max {h['max'] * 1000:.0f} ms; the last webhook {h['after_s']:.1f} s after the last message;"
        f" invalid signatures {h['invalid']}, duplicates {h['duplicates']}; {h['where']}")
    return result


def paced_webhooks(hooks: EnvoiStack, rate: float, phase_fn) -> dict:
    """--webhook-rate: run a phase of the plain region (its relay at its maximum) while `delivered` outbox
    rows are committed at `rate`/s into the --webhooks region, whose dispatcher sends them to its receiver;
    then wait for all of them and add commit -> received p50/p99 to the phase's result."""
    receiver = hooks.receiver
    receiver.reset()
    base = receiver.stats()["received"]
    stop, sent = threading.Event(), []
    pacer = threading.Thread(target=_pace_outbox, args=(hooks, rate, stop, sent), name="paced-webhooks")
    pacer.start()
    try:
        result = phase_fn()
    finally:
        stop.set()
        pacer.join()
    receiver.wait(base + sum(sent))
    got = receiver.stats()
    seconds = result["e2e_s"]
    result["paced"] = h = {"rate": rate, "n": sum(sent), "p50": got["p50"], "p99": got["p99"], "max": got["max"],
                           "invalid": got["invalid"], "duplicates": got["received"] - got["distinct"]}
    log(f"{result['name']}: beside it (relay at {result['rate']:.0f} msg/s over {seconds:.1f} s), {h['n']}"
        f" webhooks committed at {rate:.0f}/s -> received p50 {h['p50'] * 1000:.0f} ms, p99 {h['p99'] * 1000:.0f} ms,"
        f" max {h['max'] * 1000:.0f} ms; invalid signatures {h['invalid']}, duplicates {h['duplicates']}")
    return result


def _pace_outbox(hooks: EnvoiStack, rate: float, stop: threading.Event, sent: list) -> None:
    """Commit `delivered` outbox rows for the --webhooks region's subscribed URL at `rate`/s (a batch every
    20 ms, the dispatcher's doorbell rung after each commit) until `stop`; appends each batch's size."""
    import redis

    from envoi.webhooks import store

    bell = redis.Redis.from_url(hooks.redis_url)
    tag = uuid.uuid4().hex[:6]
    with hooks.connect() as conn:
        hook = conn.execute("SELECT account_id, domain_id, url FROM webhooks WHERE event_type = 'delivered'"
                            " ORDER BY id LIMIT 1").fetchone()
        t0, total = time.time(), 0
        while not stop.is_set():
            now = time.time()
            due = int(rate * (now - t0)) - total
            if due > 0:
                ids = [f"paced-{tag}-{total + i}" for i in range(due)]
                conn.execute(
                    "INSERT INTO webhook_deliveries (account_id, domain_id, event_type, url, endpoint, event_id,"
                    " payload) SELECT %s, %s, 'delivered', %s, %s, e, p::jsonb FROM unnest(%s::text[], %s::text[])"
                    " AS u(e, p)",
                    (hook["account_id"], hook["domain_id"], hook["url"], store.endpoint_of(hook["url"]), ids,
                     [json.dumps({"id": e, "event": "delivered", "timestamp": now, "recipient": f"{e}@paced.test",
                                  "message": {"headers": {"message-id": f"{e}@paced"}}}) for e in ids]))
                bell.lpush("envoi:eu:webhooks:wakeup", 1)  # the dispatcher's doorbell (webhooks.service)
                bell.ltrim("envoi:eu:webhooks:wakeup", 0, 0)
                total += due
                sent.append(due)
            time.sleep(0.02)


def breakdown(envoi: EnvoiStack, after_id: int) -> dict:
    """Where the delivered -> received time goes, per webhook of a phase (p50 / p99 of each stage, ms):
    relay: the event's timestamp (the sink's reply) -> its outbox row's transaction start (the relay's
    group commit); outbox: that -> the request's start (commit, doorbell, the dispatcher's wake-up and
    claim, plus the <= 100 ms the result waits to be written, which is counted here: attempted_at is the
    result write's time); http: the request itself (the receiver's answer)."""
    with envoi.connect() as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM d.created_at) - (d.payload->>'timestamp')::float8 AS relay,"
            " extract(epoch FROM a.attempted_at - d.created_at) - a.latency_ms / 1000.0 AS outbox,"
            " a.latency_ms / 1000.0 AS http FROM webhook_deliveries d JOIN webhook_attempts a ON a.delivery_id = d.id"
            " WHERE d.id > %s AND a.outcome = 'delivered'", (after_id,)).fetchall()
    out = {}
    for stage in ("relay", "outbox", "http"):
        values = [float(r[stage]) for r in rows]
        out[stage] = (percentile(values, 50), percentile(values, 99))
    out["where"] = ", ".join(f"{k} p50/p99 {out[k][0] * 1000:.0f}/{out[k][1] * 1000:.0f} ms"
                             for k in ("relay", "outbox", "http"))
    return out


def envoi_phases(args, envoi: EnvoiStack, sink: SmtpSink, label: str, system: str,
                 paced: EnvoiStack | None = None) -> dict:
    """Every path of --paths through one region; keys are the path names ("smtp", "urlencoded", ...),
    prefixed "baseline " for the --baseline region. paced: the --webhooks region, which gets webhooks at
    --webhook-rate during each phase (paced_webhooks)."""
    key = "" if system == "envoi" else f"{system} "
    this = {}

    def wrap(phase_fn):
        if paced is not None:
            return paced_webhooks(paced, args.webhook_rate, phase_fn)
        return with_webhooks(envoi, phase_fn)
    for path in args.paths:
        name = f"{label}{system} ({LABELS[path]})"
        if path == "smtp":
            messages = make_messages(args.n, f"smtp-{uuid.uuid4().hex[:6]}", html=args.webhooks)
            this[f"{key}smtp"] = wrap(lambda name=name, messages=messages: envoi_phase(
                envoi, sink, name, args.n, functools.partial(
                    inject_smtp, envoi.smtp_port, messages, args.sessions,
                    auth=(envoi.smtp_login, envoi.smtp_password), starttls=True)))
        elif path in ("batch", "batch-paused"):
            batches = max(1, args.n // 1000)

            def inject(batches: int = batches, paused: bool = path == "batch-paused") -> dict:
                relay = envoi.procs["relay"].pid
                if paused:
                    os.kill(relay, signal.SIGSTOP)
                try:
                    seconds, errors, cpu = inject_batch(envoi.api_port, envoi.api_key, batches,
                                                        f"batch-{uuid.uuid4().hex[:6]}", html=args.webhooks)
                finally:
                    if paused:
                        os.kill(relay, signal.SIGCONT)
                return {"inject_s": seconds, "injector_cpu_s": cpu, "errors": errors}
            this[f"{key}{path}"] = wrap(lambda name=name, inject=inject, batches=batches: envoi_phase(
                envoi, sink, name, batches * 1000, inject, counted=True))
        else:
            this[f"{key}{path}"] = wrap(lambda name=name, path=path: envoi_phase(
                envoi, sink, name, args.n, wrk_inject(envoi, path, args.n, args), counted=True))
    return this


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000, help="messages per phase (batch: n // 1000 batches)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="repeat the phases; ratios are per round, and their medians are printed")
    parser.add_argument("--paths", default=",".join(PATHS),
                        help=f"Envoi paths to measure, comma-separated, of {','.join(PATHS)} (default: all), or"
                             " batch-paused (the batch path with the relay stopped while the POSTs are accepted)")
    parser.add_argument("--sessions", type=int, default=20, help="SMTP injection sessions")
    parser.add_argument("--http-concurrency", type=int, default=16, help="wrk connections")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (one is enough to saturate)")
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--api-threads", type=int, default=8)
    parser.add_argument("--api-server", default="", choices=("", "gunicorn", "granian"),
                        help="ENVOI_API_SERVER of this checkout's region (not the --baseline's); default: its default")
    parser.add_argument("--smtp-processes", type=int, default=1, help="envoi smtp --processes")
    parser.add_argument("--connections", type=int, default=50,
                        help="sessions to the sink for both relays (Envoi ENVOI_RELAY_CONNECTIONS; Postfix"
                             " default_destination_concurrency_limit)")
    parser.add_argument("--skip-postfix", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-smtp", action="store_true", help="leave out Envoi's SMTP submission path")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="also run Envoi from this checkout of another revision (e.g. a git worktree of the"
                             " previous commit) in every round, against the same Postfix phase; the two take"
                             " turns going first, and both sets of ratios are printed")
    parser.add_argument("--webhooks", action="store_true",
                        help="HTML bodies with 10 links, and a second region of this checkout with open/click/"
                             "unsubscribe tracking, `delivered` webhooks to a local receiver and the dispatcher,"
                             " taking turns with the plain one: its rate against the plain one's per round")
    parser.add_argument("--webhook-rate", type=float, default=0,
                        help="with --webhooks: during each plain-region phase (the relay at its maximum), commit"
                             " `delivered` outbox rows at this rate/s into the --webhooks region (its dispatcher"
                             " and receiver): commit -> received p50/p99 per phase")
    args = parser.parse_args()
    if args.webhook_rate and not args.webhooks:
        parser.error("--webhook-rate needs --webhooks (its region's dispatcher and receiver)")
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip() and not (args.skip_smtp and p.strip() == "smtp")]
    unknown = set(args.paths) - set(PATHS) - set(EXTRA_PATHS)
    if unknown:
        parser.error(f"unknown paths {sorted(unknown)}; known: {', '.join(PATHS + EXTRA_PATHS)}")
    if any(p in WRK_KINDS for p in args.paths):
        ensure_wrk()  # fail (or install) before anything starts
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
                # --baseline with --webhooks: the baseline's tracked + webhooks region too (the A/B of
                # what the webhooks add, in one run).
                roots |= {"baseline webhooks": roots["baseline"]} if args.webhooks and args.baseline else {}
                for system, root in roots.items():
                    stacks[system] = start_envoi(args, workdir / system.replace(" ", "-"), sink, root,
                                                 webhooks=system.endswith("webhooks"))
            # With a baseline or --webhooks, the regions take turns going first, round by round (the
            # machine drifts).
            order = list(stacks) if number % 2 else list(reversed(stacks))
            for system in order:
                paced = stacks["webhooks"] if args.webhook_rate and system == "envoi" else None
                this.update(envoi_phases(args, stacks[system], sink, label, system, paced))
            results += list(this.values())
            rounds.append(this)
        envoi = stacks["envoi"]
        kind = next((p for p in args.paths if p in WRK_KINDS), None)
        if not args.skip_latency and kind:
            # Accept latency (request sent -> 200, which comes after the commit) at half the path's
            # median end-to-end rate: wrk paces each connection.
            rate = statistics.median(r[kind]["rate"] for r in rounds) / 2
            n = min(args.n, max(1000, int(rate * 20)))
            log(f"accept latency at half the maximum rate: {n} messages ({kind}) at {rate:.0f} msg/s")
            results.append(envoi_phase(envoi, sink, f"envoi ({LABELS[kind]}) paced at {rate:.0f} msg/s", n,
                                       wrk_inject(envoi, kind, n, args, rate=rate), counted=True))
    finally:
        for stack in stacks.values():
            stack.stop()
            if stack.receiver is not None:
                stack.receiver.stop()
        sink.stop()
    print(f"\n# relay_vs_postfix: n={args.n} x ~5 KB, 1,000 recipient domains, {args.sessions} SMTP injection "
          f"sessions, {args.http_concurrency} wrk connections, {args.connections} relay sessions, "
          f"DKIM RSA-2048 everywhere")
    print("(cpu ms/msg: the system's own processes; pg: its Postgres backends; inj: the injector's own CPU"
          " (wrk for HTTP, this process for SMTP and batch); accept p50/p99: HTTP request -> 200)")
    print(f"machine: {os.cpu_count()} cores, load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'system':62} {'accept/s':>8} {'e2e/s':>6} {'cpu ms':>6} {'pg ms':>6} {'inj ms':>6} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'errors':>6}")
    nan = float("nan")
    for r in results:
        print(f"{r['name']:62} {r['accept_rate']:8.0f} {r['rate']:6.0f} {r.get('cpu_ms', nan):6.2f} "
              f"{r.get('pg_ms', nan):6.2f} {r['injector_ms']:6.3f} {r.get('p50_ms', nan):7.1f} "
              f"{r.get('p99_ms', nan):7.1f} {r.get('errors', 0):6d}")
    for r in results:
        if "split" in r:
            print(f"cpu ms/msg by process, {r['name']}: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in r["split"].items()) + f", postgres {r['pg_ms']:.2f}"
                  + f"; postgres transactions/msg {r['xacts']:.3f}")
    for path in args.paths:
        for key in (path, f"baseline {path}", f"webhooks {path}", f"baseline webhooks {path}"):
            samples = [r for r in rounds if key in r]
            if not samples:
                continue
            if len(samples) > 1 or args.skip_postfix:
                print(f"MEDIAN {key}: accepted {statistics.median(r[key]['accept_rate'] for r in samples):.0f}/s, "
                      f"end to end {statistics.median(r[key]['rate'] for r in samples):.0f}/s, injector "
                      f"{statistics.median(r[key]['injector_ms'] for r in samples):.3f} ms/msg against the system's "
                      f"{statistics.median(r[key]['cpu_ms'] + r[key]['pg_ms'] for r in samples):.2f}")
            if args.skip_postfix:
                continue
            ratios = [r[key]["rate"] / r["postfix"]["rate"] for r in samples]
            for r, ratio in zip(samples, ratios, strict=True):
                print(f"RATIO {r[key]['name']} / postfix+opendkim = {ratio:.2f}")
            print(f"MEDIAN RATIO {key} / postfix+opendkim = {statistics.median(ratios):.2f}"
                  f" over {len(ratios)} rounds ({', '.join(f'{x:.2f}' for x in ratios)})")
    if args.webhooks:
        print("\n# --webhooks: tracking (open/click/unsubscribe) + `delivered` webhooks + dispatcher against the"
              " same paths without, same run (end-to-end rate: the sink's count)")
        for prefix in ("", "baseline "):
            for path in args.paths:
                plain, hooked = f"{prefix}{path}", f"{prefix}webhooks {path}"
                samples = [r for r in rounds if plain in r and hooked in r]
                ratios = [r[hooked]["rate"] / r[plain]["rate"] for r in samples]
                for r, ratio in zip(samples, ratios, strict=True):
                    h = r[hooked]["webhooks"]
                    print(f"RATIO {r[hooked]['name']} / {r[plain]['name']} = {ratio:.2f}; delivered -> webhook"
                          f" received p50 {h['p50'] * 1000:.0f} ms, p99 {h['p99'] * 1000:.0f} ms ({h['where']}); last"
                          f" webhook {h['after_s']:.1f} s after the last message; invalid {h['invalid']}, duplicates"
                          f" {h['duplicates']}")
                    # What tracking + webhooks add per message, process by process (CPU is what a shared
                    # machine disturbs least).
                    added = {proc: r[hooked]["split"][proc] - r[plain]["split"].get(proc, 0.0)
                             for proc in r[hooked]["split"]}
                    added["postgres"] = r[hooked]["pg_ms"] - r[plain]["pg_ms"]
                    print(f"ADDED cpu ms/msg {r[hooked]['name']}: " + ", ".join(f"{k} {v:+.2f}" for k, v in added.items())
                          + f"; total {sum(added.values()):+.2f} on {r[plain]['cpu_ms'] + r[plain]['pg_ms']:.2f}")
                if ratios:
                    print(f"MEDIAN RATIO {hooked} / {plain} = {statistics.median(ratios):.2f} over {len(ratios)}"
                          f" rounds ({', '.join(f'{x:.2f}' for x in ratios)})")
                for r in rounds:
                    if plain in r and "paced" in r[plain]:
                        h = r[plain]["paced"]
                        print(f"PACED webhooks at {h['rate']:.0f}/s beside {r[plain]['name']} (relay at {r[plain]['rate']:.0f}"
                              f" msg/s): commit -> received p50 {h['p50'] * 1000:.0f} ms, p99 {h['p99'] * 1000:.0f} ms,"
                              f" max {h['max'] * 1000:.0f} ms over {h['n']}; invalid {h['invalid']}, duplicates"
                              f" {h['duplicates']}")


if __name__ == "__main__":
    main()
