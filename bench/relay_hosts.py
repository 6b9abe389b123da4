"""Capacity with 1, 2 and 3 relay hosts: each `envoi relay` in its own network namespace (own
addresses, joined by a bridge), sharing one region's Postgres and Redis, draining the same queue.

    sudo .venv/bin/python bench/relay_hosts.py [--n 10000] [--hosts 1,2,3] [--connections 50]

Per round (k hosts):
1. N recipients (one per message, ~5 KB messages cloned from one accepted message, 1,000
   destination domains) are queued with SQL, due in an hour; VACUUM.
2. k relays start, each in namespace h<i> with its own egress IP registered for its host in the
   IP inventory (shared pool), ENVOI_SMTP_ROUTE to Postfix's `smtp-sink` in the root namespace.
   Round 0 (the reference, same run): one relay in the root namespace, Postgres and Redis on
   127.0.0.1 without socat, sending from the bridge's root-side address.
3. Once they are up, the queue is made due (one UPDATE of N rows) and the drain is timed until the
   sink has counted N messages.

Reported: msg/s; relay CPU per message (user+system of the k relay processes from /proc over the
drain: on this 2-core machine the namespaces share the cores, so throughput can't scale, but CPU per
message should stay flat as hosts are added); Postgres work per delivered message from
pg_stat_database of the bench database over the drain (transactions committed; rows inserted +
updated + deleted; rows fetched), minus the one UPDATE that made the queue due; and which egress
addresses the sink saw (each host only its own).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from backlog import fill  # noqa: E402
from relay_vs_postfix_lib import EnvoiStack, SmtpSink, cpu_seconds, ensure_postfix, log  # noqa: E402

from tests.support import netns  # noqa: E402

STATS = ("xact_commit", "tup_inserted", "tup_updated", "tup_deleted", "tup_fetched")


class GatewaySink(SmtpSink):
    """smtp-sink on the bridge's root-side address, where the namespaces reach it."""

    def __init__(self, workdir: Path, host: str):
        super().__init__(workdir)
        self.host = host

    def start(self) -> GatewaySink:
        ensure_postfix()
        self.proc = subprocess.Popen(["smtp-sink", "-u", "nobody", "-c", f"{self.host}:{self.port}", "1024"],
                                     stdout=self.out.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
                return self
            time.sleep(0.1)
        raise RuntimeError("smtp-sink did not start")


def pg_stats(envoi: EnvoiStack) -> dict:
    time.sleep(1.2)  # backends report their counters within a second of going idle
    with envoi.connect() as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute(f"SELECT {', '.join(STATS)} FROM pg_stat_database WHERE datname = %s",
                            (envoi.dbname,)).fetchone()


def one_round(envoi: EnvoiStack, net: netns.Hosts, sink: GatewaySink, k: int, n: int, connections: int,
              workdir: Path) -> dict:
    with envoi.connect() as conn:
        conn.execute("DELETE FROM recipients")
        conn.execute("DELETE FROM messages")
        conn.execute("DELETE FROM events")
    fill(envoi, n, 1)
    with envoi.connect() as conn:
        conn.execute("UPDATE recipients SET next_attempt_at = now() + interval '1 hour' WHERE status = 'queued'")
    envoi.vacuum()
    # k = 0: the reference, one relay in the root namespace reaching Postgres and Redis on 127.0.0.1
    # directly (no socat), sending from host h0's egress IP all the same.
    reference = k == 0
    database_url, redis_url = (envoi.database_url, envoi.redis_url) if reference else \
        net.reach(envoi.database_url, envoi.redis_url)
    relays = []
    for i in range(max(k, 1)):
        argv = [sys.executable, "-m", "envoi.cli", "relay"]
        env = envoi.env() | {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "ENVOI_RELAY_HOST": f"h{i}",
                             "ENVOI_SMTP_ROUTE": f"{net.gateway}:{sink.port}",
                             "ENVOI_RELAY_CONNECTIONS": str(connections), "ENVOI_IPS_REFRESH": "1"}
        log_path = workdir / f"relay-{k}-{i}.log"
        if reference:
            env["ENVOI_RELAY_HOST"] = "root"  # its own inventory row, added below
        relays.append((subprocess.Popen(argv if reference else net.exec_argv(f"h{i}", argv),
                                        env=env, cwd=Path(__file__).resolve().parent.parent,
                                        stdout=log_path.open("wb"), stderr=subprocess.STDOUT), log_path))
    deadline = time.monotonic() + 60
    while not all(b"delivering" in p.read_bytes() for _, p in relays):
        if time.monotonic() > deadline or any(r.poll() is not None for r, _ in relays):
            raise RuntimeError("relays did not start: " + relays[0][1].read_text()[-2000:])
        time.sleep(0.2)
    time.sleep(2)  # past start-up (releasing old leases, loading the inventory)
    pids = [r.pid for r, _ in relays]
    base = sink.count()
    before = pg_stats(envoi)
    cpu0 = cpu_seconds(pids)
    started = time.monotonic()
    with envoi.connect() as conn:
        conn.execute("UPDATE recipients SET next_attempt_at = now() WHERE status = 'queued'")
    sink.wait_count(base + n, timeout=1800)
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(pids) - cpu0
    for proc, _ in relays:
        proc.terminate()
    for proc, _ in relays:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    after = pg_stats(envoi)  # the relays are gone: their last outcomes are committed and reported
    delta = {s: after[s] - before[s] for s in STATS}
    delta["xact_commit"] -= 1 + 1  # the UPDATE that made the queue due, and pg_stat_clear_snapshot's
    delta["tup_updated"] -= n
    with envoi.connect() as conn:
        left = conn.execute("SELECT count(*) AS n FROM recipients WHERE status = 'queued'").fetchone()["n"]
        peers = conn.execute("SELECT data->'envelope'->>'sending-ip' AS ip, count(*) AS n FROM events"
                             " WHERE event = 'delivered' GROUP BY 1 ORDER BY 1").fetchall()
    return {"hosts": k, "n": n, "seconds": elapsed, "rate": n / elapsed, "cpu_ms": cpu / n * 1000,
            "xacts": delta["xact_commit"] / n,
            "rows_written": (delta["tup_inserted"] + delta["tup_updated"] + delta["tup_deleted"]) / n,
            "rows_fetched": delta["tup_fetched"] / n, "queued_left": left,
            "egress": {r["ip"]: r["n"] for r in peers}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--hosts", default="0,1,2,3", help="0: the reference (one relay, root namespace)")
    parser.add_argument("--connections", type=int, default=50, help="ENVOI_RELAY_CONNECTIONS per relay")
    args = parser.parse_args()
    if not netns.available():
        sys.exit("needs root, iproute2 and socat")
    counts = [int(x) for x in args.hosts.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="envoi-relay-hosts-"))
    hosts = {f"h{i}": ["{net}." + str(11 + i), "{net}." + str(21 + i)] for i in range(max(max(counts), 1))}
    log(f"load before: {os.getloadavg()}")
    with netns.Hosts(hosts) as net:
        sink = GatewaySink(workdir, net.gateway).start()
        envoi = EnvoiStack(workdir, sink.port, processes=())
        try:
            envoi.setup()
            from envoi import runtime

            services = runtime.build(envoi.settings(), pool_size=1)
            try:
                for i in range(max(counts)):
                    services.ips.add_ip("bench", net.hosts[f"h{i}"][1], host=f"h{i}", helo=f"h{i}.bench.test")
                services.ips.add_ip("bench", net.gateway, host="root", helo="root.bench.test")
            finally:
                services.close()
            results = []
            for k in counts:
                log(f"{k} host(s): {args.n} messages")
                result = one_round(envoi, net, sink, k, args.n, args.connections, workdir)
                result["load"] = os.getloadavg()[0]
                log(str(result))
                results.append(result)
        finally:
            envoi.stop()
            sink.stop()
    print("| relay hosts | messages | seconds | msg/s | relay CPU ms/msg | PG xacts/msg | PG rows written/msg"
          " | PG rows fetched/msg | egress IPs seen | load (1 min) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        label = "1 (reference: root namespace, no socat)" if r["hosts"] == 0 else r["hosts"]
        print(f"| {label} | {r['n']} | {r['seconds']:.1f} | {r['rate']:.0f} | {r['cpu_ms']:.2f} |"
              f" {r['xacts']:.3f} | {r['rows_written']:.2f} | {r['rows_fetched']:.1f} |"
              f" {', '.join(f'{ip}: {c}' for ip, c in r['egress'].items())} | {r['load']:.1f} |")


if __name__ == "__main__":
    main()
