"""Webhook dispatch figures: deliveries per second, commit->received latency, fairness, CPU per delivery.

    .venv/bin/python bench/webhook_dispatch.py [--n 20000] [--rq-n 600] [--processes 2] [--seconds 20]
        [--pairs 3] [--rate R] [--skip-rq] [--skip-latency] [--baseline CHECKOUT --tp-rounds 3] [--py-spy FILE]

Throwaway database and Redis db; the receiver (bench/webhook_receiver.py, aiohttp) runs in its own
process and verifies every signature. Phases, in one run:

1. reference: the RQ design (one job per delivery, one synchronous POST at a time): `--rq-n` rows
   leased and enqueued, `envoi worker --processes P` (already started) runs them;
2. throughput: `--n` outbox rows of `delivered` events over 10 accounts (`--accounts`), committed at once, then
   `envoi webhooks dispatch --processes P` (already started) delivers them: deliveries/s from the
   commit to the last one received, and CPU per delivery (dispatcher processes; their Postgres
   backends separately);
3. latency: rows committed at half the measured rate (or `--rate`) for `--seconds` (a batch every 20 ms, doorbell
   rung after each commit): commit->received p50/p99 at the receiver;
4. fairness: the same again while an 11th tenant has a 5 s endpoint and a dead one (accepts TCP,
   never answers: each attempt times out), 2,000 rows due on each: the other tenants' p99 against 3.
   The 5 s endpoint is a receiver process of its own (another server, as it would be).
   Phases 3 and 4 are interleaved --pairs times (A B A B ...; this machine drifts more between two
   phases than the effect): the medians of the p99s with their spread, and the median of the
   per-pair ratios B/A.

--baseline CHECKOUT (a checkout of another revision, e.g. `git worktree add --detach /tmp/envoi-base
HEAD~1`): phase 2 is run --tp-rounds times by this checkout's dispatchers and that one's in turn (the
idle set is SIGSTOPped), the same-run A/B of a dispatcher change: rate and CPU per delivery of each,
and the median of the per-round CPU ratios. --py-spy FILE: `py-spy record --gil -f raw` of this
checkout's dispatchers (and their children) during phase 2 (root needed).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_domain import verified_domain  # noqa: E402
from relay_vs_postfix_lib import cpu_seconds  # noqa: E402

from envoi import runtime  # noqa: E402
from envoi.infra.migrate import ensure_database, migrate  # noqa: E402
from envoi.infra.settings import Settings  # noqa: E402
from envoi.webhooks import jobs, store  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432/postgres"
HERE = Path(__file__).resolve().parent


def free_redis() -> str:
    for n in range(15, 0, -1):
        conn = redis.Redis(db=n)
        if conn.dbsize() == 0 and conn.set("envoi:test:claim", "1", nx=True, ex=3600):
            return f"redis://127.0.0.1:6379/{n}"
    raise SystemExit("no free Redis db")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as resp:
        return json.loads(resp.read())


def reset(port: int) -> None:
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/reset", method="POST"), timeout=10)


def wait_received(port: int, total: int, timeout: float = 600) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if stats(port)["received"] >= total:
            return time.time()
        time.sleep(0.02)
    raise SystemExit(f"receiver got {stats(port)['received']} of {total}")


def wait_attempted(svc, ids: list[int], timeout: float = 600) -> float:
    """When every one of these deliveries has had its attempt (whatever its outcome)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with svc.db.transaction() as conn:
            if conn.execute("SELECT count(*) AS n FROM webhook_deliveries WHERE id = ANY(%s) AND attempts > 0",
                            (ids,)).fetchone()["n"] == len(ids):
                return time.time()
        time.sleep(0.05)
    raise SystemExit("the RQ workers did not finish")


def insert(conn, domains: list[dict], url: str, n: int, tag: str) -> None:
    """n `delivered` outbox rows for `url`, round-robin over the domains, committed by the caller."""
    rows = [(domains[i % len(domains)], f"{tag}-{i}") for i in range(n)]
    now = time.time()
    conn.execute(
        "INSERT INTO webhook_deliveries (account_id, domain_id, event_type, url, endpoint, event_id, payload)"
        " SELECT a, d, 'delivered', %s, %s, e, p::jsonb FROM unnest(%s::bigint[], %s::bigint[], %s::text[],"
        " %s::text[]) AS u(a, d, e, p)",
        (url, store.endpoint_of(url), [d["account_id"] for d, _ in rows], [d["id"] for d, _ in rows],
         [e for _, e in rows],
         [json.dumps({"id": e, "event": "delivered", "timestamp": now, "account": d["account_id"],
                      "recipient": f"{e}@bench.test", "message": {"headers": {"message-id": f"{e}@bench"}}})
          for d, e in rows]))


def backends(dsn: str, dbname: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return [r[0] for r in c.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                                        (dbname,)).fetchall()]


def start(argv: list[str], env: dict, ready: str, logfile: Path, cwd: Path | None = None) -> subprocess.Popen:
    out = logfile.open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
    deadline = time.time() + 60
    while ready not in logfile.read_text(errors="replace"):
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"{argv} did not start:\n{logfile.read_text()[-2000:]}")
        time.sleep(0.1)
    time.sleep(0.5)
    return proc


def settle(pids: list[int], timeout: float = 60) -> None:
    """Wait until these processes (and their children) stop burning CPU: a child dispatcher imports
    for a few seconds after its parent is ready, CPU that is not the deliveries'."""
    deadline = time.time() + timeout
    last = cpu_seconds(pids)
    while time.time() < deadline:
        time.sleep(1.0)
        now = cpu_seconds(pids)
        if now - last < 0.05:
            return
        last = now


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (all sockets): a
    dropped SYN is retried after 1 s, then 3 s, which is what a burst of new connections costs."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return 0


def traced(logfile: Path, since: int, limit: int = 12, ignore: tuple[str, ...] = ()) -> int:
    """Print the dispatchers' ENVOI_WEBHOOK_TRACE lines written to `logfile` after byte `since` (the
    first `limit`, and how many), leaving out requests to the `ignore` endpoints (host:port); returns
    the file's size now."""
    data = logfile.read_bytes()
    lines = [line for line in data[since:].decode(errors="replace").splitlines()
             if "WARNING" in line and not any(f"request to {i} " in line for i in ignore)]
    for line in lines[:limit]:
        print(f"    {line[:300]}", flush=True)
    if len(lines) > limit:
        print(f"    ... {len(lines) - limit} more", flush=True)
    return len(data)


def app_backends(dsn: str, app: str) -> list[int]:
    """The Postgres backends of one dispatcher set (PGAPPNAME, set in its environment)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        return [r[0] for r in c.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,))]


def commits(dsn: str) -> int:
    """Transactions committed in the bench's database so far (the committing rows' own included)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SELECT pg_stat_clear_snapshot()")
        return c.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]


def latency_phase(svc, domains, url, port, rate: float, seconds: float, cpu_pids: list[int] = (),
                  receiver: int | None = None, dsn: str = "", app: str = "") -> dict:
    """Commit rows at `rate`/s for `seconds` (a batch every 20 ms); the receiver's p50/p99 for them, the
    dispatchers' CPU per delivery, and (given) the receiver's and the dispatchers' Postgres backends'."""
    reset(port)
    base = stats(port)["received"]
    overflows = listen_overflows()
    cpu0 = cpu_seconds(list(cpu_pids))
    pg = app_backends(dsn, app) if app else []
    pg0, tx0 = cpu_seconds(pg), commits(dsn) if dsn else 0
    rx0 = cpu_seconds([receiver]) if receiver else 0.0
    total, tick, t0 = 0, 0.02, time.time()
    while time.time() - t0 < seconds:
        due = int(rate * (time.time() - t0)) - total
        if due > 0:
            with svc.db.transaction() as conn:
                insert(conn, domains, url, due, f"lat{uuid.uuid4().hex[:16]}")
            svc.webhooks.doorbell.ring()
            total += due
        time.sleep(tick)
    wait_received(port, base + total, timeout=120)
    cpu_ms = (cpu_seconds(list(cpu_pids)) - cpu0) * 1000 / max(total, 1)
    pg_ms = (cpu_seconds(pg) - pg0) * 1000 / max(total, 1)
    tx = ((commits(dsn) - tx0) / max(total, 1)) if dsn else float("nan")
    rx_ms = ((cpu_seconds([receiver]) - rx0) * 1000 / max(total, 1)) if receiver else float("nan")
    s = stats(port)
    return {"n": total, "p50": s["p50"], "p99": s["p99"], "max": s["max"], "cpu_ms": cpu_ms, "pg_cpu_ms": pg_ms,
            "receiver_cpu_ms": rx_ms, "tx": tx, "invalid": s["invalid"], "duplicates": s["received"] - s["distinct"],
            "overflows": listen_overflows() - overflows, "receiver_stalls": s.get("stalls", [])}


def throughput_phase(svc, domains, url, port, n: int, dispatch: subprocess.Popen, dsn: str, dbname: str,
                     tag: str) -> dict:
    """n rows committed at once, delivered by this (running) dispatcher set: rate and CPU per delivery."""
    base = stats(port)["received"]
    with svc.db.transaction() as conn:
        insert(conn, domains, url, n, tag)
    svc.webhooks.doorbell.ring()
    pg = backends(dsn, dbname)
    overflows = listen_overflows()
    cpu0, pg0, t0 = cpu_seconds([dispatch.pid]), cpu_seconds(pg), time.time()
    t1 = wait_received(port, base + n)
    s = stats(port)
    return {"rate": n / (t1 - t0), "cpu_ms": (cpu_seconds([dispatch.pid]) - cpu0) * 1000 / n,
            "pg_cpu_ms": (cpu_seconds(pg) - pg0) * 1000 / n, "overflows": listen_overflows() - overflows,
            "invalid": s["invalid"],
            "duplicates": s["received"] - s["distinct"]}


def taking_turns(sets: dict, rounds: int, dsn: str):
    """(round, name) for each set in turn, `rounds` times, the order reversed every other round; while a
    set's turn runs, the other sets are paused."""
    for number in range(rounds):
        for name in (list(sets) if number % 2 == 0 else list(reversed(sets))):
            for other, proc in sets.items():
                if other != name:
                    pause(proc, True, dsn)
            time.sleep(0.5)
            try:
                yield number, name
            finally:
                for other, proc in sets.items():
                    if other != name:
                        pause(proc, False)


def pause(proc: subprocess.Popen, stop: bool, dsn: str = "") -> None:
    """SIGSTOP / SIGCONT a dispatcher set (its process group: the parent and its children). A set is
    never left stopped inside a transaction (a claim holds the claim lock every dispatcher takes turns
    on): stopped, then, if one of its backends is idle in a transaction, let go and stopped again. Nor
    with rows leased (results not yet written, up to 0.1 s after their answers): stopped, those leases
    ran out a minute later under the other set, which sent those rows again and, while they counted
    against the endpoint's cap, waited (a 67 s round with 42 duplicates, 2026-12-07)."""
    if not stop:
        os.killpg(proc.pid, signal.SIGCONT)
        return
    deadline = time.time() + 30
    while time.time() < deadline:
        with psycopg.connect(dsn, autocommit=True) as c:
            if not c.execute("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
                             " AND leased_until > now()").fetchone()[0]:
                break
        time.sleep(0.05)
    for _ in range(200):
        os.killpg(proc.pid, signal.SIGSTOP)
        time.sleep(0.2)
        with psycopg.connect(dsn, autocommit=True) as c:
            stuck = c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                              " AND state LIKE 'idle in transaction%%' OR (datname = current_database()"
                              " AND state = 'active' AND pid <> pg_backend_pid())").fetchone()[0]
        if not stuck:
            return
        os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(0.05)
    raise SystemExit("could not pause a dispatcher set outside a transaction")


def spread(values: list[float]) -> str:
    return (f"median {statistics.median(values) * 1000:.0f} ms (min {min(values) * 1000:.0f}, max"
            f" {max(values) * 1000:.0f}; {', '.join(f'{v * 1000:.0f}' for v in values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rq-n", type=int, default=600)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--accounts", type=int, default=10,
                        help="tenants sharing the receiver endpoint (1 with the default caps, --per-endpoint 32"
                             " --per-account 64: what one endpoint of one tenant gets, e.g. beside a relay)")
    parser.add_argument("--per-endpoint", type=int, default=512)
    parser.add_argument("--per-account", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=3, help="A B latency phase pairs (interleaved)")
    parser.add_argument("--rate", type=float, default=0,
                        help="latency phases at this rate/s (default: half the measured phase-2 rate)")
    parser.add_argument("--skip-rq", action="store_true", help="leave out the RQ reference phase")
    parser.add_argument("--skip-latency", action="store_true", help="leave out phases 3 and 4")
    parser.add_argument("--baseline", metavar="CHECKOUT", help="A/B phase 2 against this checkout's dispatcher")
    parser.add_argument("--tp-rounds", type=int, default=0, help="phase 2 repetitions (default 1, 3 with --baseline)")
    parser.add_argument("--receiver", default=str(HERE / "webhook_receiver.py"),
                        help="the receiver script (e.g. an older one, to compare instruments)")
    parser.add_argument("--ab-latency", type=int, default=0, metavar="K",
                        help="with --baseline: K rounds of a latency phase at --rate by each set in turn (the other"
                             " paused): dispatcher, its Postgres backends' and the receiver's CPU per delivery")
    parser.add_argument("--py-spy", metavar="FILE", help="py-spy record --gil -f raw of the dispatchers in phase 2")
    args = parser.parse_args()
    args.tp_rounds = args.tp_rounds or (3 if args.baseline else 1)

    dbname = f"envoi_bench_{uuid.uuid4().hex[:8]}"
    dsn = psycopg.conninfo.make_conninfo(PG, dbname=dbname)
    ensure_database(dsn)
    migrate(dsn)
    redis_url = free_redis()
    key = secrets.token_bytes(32)
    settings = Settings(database_url=dsn, redis_url=redis_url, secret_key=key, lookup_key=key,
                        webhook_allow=("127.0.0.1/32",))
    svc = runtime.build(settings, pool_size=4)
    work = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    procs: list[subprocess.Popen] = []
    dead = socket.socket()
    env = {**os.environ, "ENVOI_REGION": "eu", "DATABASE_URL": dsn, "REDIS_URL": redis_url,
           "ENVOI_SECRET_KEY": base64.b64encode(key).decode(), "ENVOI_LOOKUP_KEY": base64.b64encode(key).decode(),
           "ENVOI_WEBHOOK_ALLOW": "127.0.0.1/32", "ENVOI_WEBHOOK_PER_ENDPOINT": str(args.per_endpoint),
           "ENVOI_WEBHOOK_PER_ACCOUNT": str(args.per_account), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(HERE.parent)}
    try:
        domains, keys = [], {}
        for i in range(args.accounts + 1):
            acct, domain = verified_domain(svc.accounts, f"b{i}.bench.test", f"bench{i}")
            domains.append(domain)
            keys[str(acct["id"])] = svc.webhooks.signing_key(acct["id"])
        noisy, domains = domains[-1], domains[:-1]
        (work / "keys.json").write_text(json.dumps(keys))
        port, slow_port = free_port(), free_port()
        procs.append(start([sys.executable, args.receiver, str(port), str(slow_port),
                            str(work / "keys.json")],
                           env, "", work / "receiver.log"))
        # The 5 s endpoint is another receiver process (another server, as it would be): sharing the fast
        # endpoint's process, its bursts of answers were measured as the other tenants' latency.
        slow_port = free_port()
        procs.append(start([sys.executable, str(HERE / "webhook_receiver.py"), str(slow_port), str(free_port()),
                            str(work / "keys.json")], env, "", work / "slow-receiver.log"))
        deadline = time.time() + 30
        while True:
            try:
                stats(port)
                stats(slow_port)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/hook"
        envoi = [sys.executable, "-m", "envoi.cli"]

        # 1. The RQ design, same run: rows leased and enqueued, then run by P worker processes.
        rq_rate = rq_cpu = float("nan")
        if not args.skip_rq:
            rq_rate, rq_cpu = rq_phase(args, svc, domains, url, env, work, envoi, redis_url)

        # 2. The dispatcher: N rows committed at once.
        dispatch = start(envoi + ["webhooks", "dispatch", "--processes", str(args.processes)],
                         {**env, "PGAPPNAME": "hookbench-this"}, "webhooks dispatch: region", work / "dispatch.log")
        procs.append(dispatch)
        settle([dispatch.pid])
        sets = {"this": dispatch}
        if args.baseline:
            root = Path(args.baseline).resolve()
            baseline = start(envoi + ["webhooks", "dispatch", "--processes", str(args.processes)],
                             {**env, "PYTHONPATH": str(root), "PGAPPNAME": "hookbench-baseline"},
                             "webhooks dispatch: region", work / "baseline.log",
                             cwd=root)
            procs.append(baseline)
            settle([baseline.pid])
            sets["baseline"] = baseline
        spy = None
        if args.py_spy:
            spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(dispatch.pid), "--subprocesses", "--gil",
                                    "--nonblocking", "-f", "raw", "-o", args.py_spy, "-r", "200"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2)
        tp: dict[str, list[dict]] = {name: [] for name in sets}
        for number, name in taking_turns(sets, args.tp_rounds, dsn):
            result = throughput_phase(svc, domains, url, port, args.n, sets[name], dsn, dbname,
                                      f"tp{number}{name[0]}")
            tp[name].append(result)
            log(f"dispatcher ({name}): {args.n} deliveries by {args.processes} processes = {result['rate']:.0f}/s"
                f" ({result['rate'] / rq_rate:.0f}x the RQ design), {result['cpu_ms']:.3f} ms CPU per delivery"
                f" (+ {result['pg_cpu_ms']:.2f} ms in Postgres backends); invalid signatures {result['invalid']},"
                f" duplicates {result['duplicates']}; listen queue overflows (machine-wide) +{result['overflows']}")
        if args.baseline and args.ab_latency:
            ab_latency(args, svc, domains, url, port, sets, dsn, procs[0].pid)
        if spy is not None:  # (with --ab-latency: its phases by this checkout too)
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        if args.baseline:
            pause(sets["baseline"], True, dsn)  # the latency phases measure this checkout only
            ratios = [t["cpu_ms"] / b["cpu_ms"] for t, b in zip(tp["this"], tp["baseline"], strict=True)]
            rates = [t["rate"] / b["rate"] for t, b in zip(tp["this"], tp["baseline"], strict=True)]
            log(f"A/B: CPU per delivery this / baseline per round {', '.join(f'{r:.2f}' for r in ratios)}, median"
                f" {statistics.median(ratios):.2f}; rate this / baseline {', '.join(f'{r:.2f}' for r in rates)},"
                f" median {statistics.median(rates):.2f}; medians this {statistics.median(t['cpu_ms'] for t in tp['this']):.3f}"
                f" ms, baseline {statistics.median(b['cpu_ms'] for b in tp['baseline']):.3f} ms")
        rate = statistics.median(t["rate"] for t in tp["this"])
        cpu = statistics.median(t["cpu_ms"] for t in tp["this"])
        pg_cpu = statistics.median(t["pg_cpu_ms"] for t in tp["this"])
        if args.skip_latency:
            print(json.dumps({"rq_rate": rq_rate, "rq_cpu_ms": rq_cpu, "throughput": tp}))
            return

        # 3 and 4. Latency at half that rate, without and with another tenant's 5 s endpoint and dead endpoint
        # (2,000 rows due on each), interleaved A B A B (this machine drifts): the bad endpoints' rows are
        # deleted after each B and their requests in flight given 12 s to end before the next A.
        dead.bind(("127.0.0.1", 0))
        dead.listen(4096)
        phases = {"A": [], "B": []}
        pace = args.rate or rate / 2
        log(f"dispatchers' log: {work / 'dispatch.log'}")
        seen = traced(work / "dispatch.log", 0, 0)
        for kind in "AB" * args.pairs:
            if kind == "B":
                with svc.db.transaction() as conn:
                    insert(conn, [noisy], f"http://127.0.0.1:{slow_port}/slow", 2000, f"slow{uuid.uuid4().hex[:4]}")
                    insert(conn, [noisy], f"http://127.0.0.1:{dead.getsockname()[1]}/dead", 2000,
                           f"dead{uuid.uuid4().hex[:4]}")
                svc.webhooks.doorbell.ring()
                time.sleep(1)
            result = latency_phase(svc, domains, url, port, pace, args.seconds, [dispatch.pid])
            phases[kind].append(result)
            log(f"{kind}: latency at {pace:.0f}/s{' with the bad endpoints' if kind == 'B' else ''}: {result['n']}"
                f" deliveries, commit->received p50 {result['p50'] * 1000:.0f} ms, p99 {result['p99'] * 1000:.0f} ms,"
                f" max {result['max'] * 1000:.0f} ms; dispatchers' CPU {result['cpu_ms']:.2f} ms per fast delivery;"
                f" listen queue overflows (machine-wide) +{result['overflows']}; the receiver's own loop stalls > 50"
                f" ms (longest): {', '.join(f'{x * 1000:.0f}' for x in result['receiver_stalls']) or 'none'}")
            # ENVOI_WEBHOOK_TRACE=SECONDS: what was slow (but the bad endpoints' own requests)
            seen = traced(work / "dispatch.log", seen, ignore=(f"127.0.0.1:{slow_port}", f"127.0.0.1:{dead.getsockname()[1]}"))
            if kind == "B":
                with svc.db.transaction() as conn:
                    conn.execute("DELETE FROM webhook_deliveries WHERE account_id = %s AND status = 'pending'",
                                 (noisy["account_id"],))
                time.sleep(12)
        lat, unfair = phases["A"], phases["B"]
        pair_ratios = [b["p99"] / a["p99"] for a, b in zip(lat, unfair, strict=True)]
        ratio = statistics.median(b["p99"] for b in unfair) / statistics.median(a["p99"] for a in lat)
        log(f"p50 without the bad endpoints: {spread([a['p50'] for a in lat])}; with them: {spread([b['p50'] for b in unfair])}")
        log(f"p99 without the bad endpoints: {spread([a['p99'] for a in lat])}; with them: {spread([b['p99'] for b in unfair])}")
        log(f"others' p99 with / without: ratio of medians x{ratio:.2f}; per pair (B after A)"
            f" {', '.join(f'x{r:.2f}' for r in pair_ratios)}, median x{statistics.median(pair_ratios):.2f};"
            f" slow endpoint reached {stats(slow_port)['slow']} times")
        print(json.dumps({"rq_rate": rq_rate, "rq_cpu_ms": rq_cpu, "rate": rate, "cpu_ms": cpu, "pg_cpu_ms": pg_cpu,
                          "throughput": tp, "latency": lat, "latency_with_bad_endpoints": unfair, "ratio": ratio,
                          "pair_ratios": pair_ratios}))
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        dead.close()
        svc.close()
        redis.Redis.from_url(redis_url).flushdb()
        with psycopg.connect(PG, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def ab_latency(args, svc, domains, url, port, sets: dict, dsn: str, receiver: int) -> None:
    """--ab-latency K: latency phases at --rate by this checkout's dispatchers and the baseline's in turn
    (the other set paused), K rounds: the CPU per delivery at a moderate rate, where batches are small."""
    rate = args.rate or 800
    got: dict[str, list[dict]] = {name: [] for name in sets}
    for _, name in taking_turns(sets, args.ab_latency, dsn):
        r = latency_phase(svc, domains, url, port, rate, args.seconds, [sets[name].pid], receiver, dsn,
                          f"hookbench-{name}")
        got[name].append(r)
        log(f"A/B latency ({name}) at {rate:.0f}/s: {r['n']} deliveries, p50 {r['p50'] * 1000:.0f} ms, p99"
            f" {r['p99'] * 1000:.0f} ms; CPU ms per delivery: dispatchers {r['cpu_ms']:.3f}, their Postgres"
            f" backends {r['pg_cpu_ms']:.3f}, receiver {r['receiver_cpu_ms']:.3f}; database transactions per"
            f" delivery {r['tx']:.3f} (the bench's commits of the rows included); invalid signatures"
            f" {r['invalid']}, duplicates {r['duplicates']}")
    for key in ("cpu_ms", "pg_cpu_ms", "receiver_cpu_ms", "tx", "p99"):
        this = statistics.median(r[key] for r in got["this"])
        base = statistics.median(r[key] for r in got["baseline"])
        ratios = [t[key] / b[key] for t, b in zip(got["this"], got["baseline"], strict=True)]
        log(f"A/B latency {key}: this {this:.3f}, baseline {base:.3f} (medians); per round this / baseline"
            f" {', '.join(f'{x:.2f}' for x in ratios)}, median {statistics.median(ratios):.2f}")


def rq_phase(args, svc, domains, url, env, work, envoi, redis_url) -> tuple[float, float]:
    """The RQ design, same run: --rq-n rows leased and enqueued, run by P `envoi worker` processes."""
    workers = start(envoi + ["worker", "--processes", str(args.processes)], env, "worker: region",
                    work / "worker.log")
    with svc.db.transaction() as conn:
        insert(conn, domains, url, args.rq_n, "rq")
    with svc.db.transaction() as conn:
        ids = [r["id"] for r in store.claim(conn, 10**6, 10**6, args.rq_n, 3600)]
    queue = jobs.Queue(svc.webhooks.queue_name, connection=jobs.worker_connection(redis_url))
    cpu0, t0 = cpu_seconds([workers.pid]), time.time()
    for delivery_id in ids:
        queue.enqueue(jobs.deliver, delivery_id, result_ttl=0)
    t1 = wait_attempted(svc, ids)
    rq_rate = args.rq_n / (t1 - t0)
    rq_cpu = (cpu_seconds([workers.pid]) - cpu0) * 1000 / args.rq_n
    workers.terminate()
    try:
        workers.wait(30)
    except subprocess.TimeoutExpired:
        workers.kill()  # RQ's warm shutdown may wait on its children; the figure is taken already
    with svc.db.transaction() as conn:
        rq_ok = conn.execute("SELECT count(*) AS n FROM webhook_deliveries WHERE id = ANY(%s)"
                             " AND status = 'delivered'", (ids,)).fetchone()["n"]
    log(f"RQ reference: {args.rq_n} attempts ({rq_ok} delivered) by {args.processes} worker processes in"
        f" {t1 - t0:.1f} s = {rq_rate:.0f}/s, {rq_cpu:.2f} ms CPU per delivery")
    return rq_rate, rq_cpu


if __name__ == "__main__":
    main()
