"""Where Postgres spends its time per message on the send path: statements, rows, HOT updates, WAL.

    # a private cluster with pg_stat_statements loaded (the machine's own is shared and has not):
    su postgres -c "/usr/lib/postgresql/15/bin/initdb -D /tmp/pgss/data -A trust -U postgres"
    printf "port = 5499\\nshared_preload_libraries = 'pg_stat_statements'\\nautovacuum = off\\n" >> /tmp/pgss/data/postgresql.conf
    su postgres -c "/usr/lib/postgresql/15/bin/pg_ctl -D /tmp/pgss/data -l /tmp/pgss/log start"
    psql -h 127.0.0.1 -p 5499 -U postgres -c "CREATE EXTENSION pg_stat_statements"
    BENCH_PG=postgresql://postgres@127.0.0.1:5499/postgres PYTHONPATH=CHECKOUT \\
        .venv/bin/python bench/pg_send_path.py --root CHECKOUT [--n 4000]

A region of CHECKOUT (`envoi api` + `envoi relay` to smtp-sink, as bench/relay_drain.py) is warmed
(500 messages, then 2,000 more through wrk so that the API's pool has all its connections), the relay
paused; then two phases, each measured alone: ACCEPT (n urlencoded messages through wrk, the relay
stopped) and DRAIN (the relay resumed until the sink has them). Per phase and message: the CPU of the
region's Postgres backends, WAL records and bytes (pg_stat_wal: the whole cluster, so keep it private),
rows inserted / updated / HOT-updated per table, and pg_stat_statements' statements (execution time,
calls, rows, WAL). PYTHONPATH makes this process (which migrates the region) import CHECKOUT's code.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_vs_postfix_lib import EnvoiStack, SmtpSink, inject_wrk, warm_then_pause_relay  # noqa: E402

ADMIN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5499/postgres")


def admin():
    return psycopg.connect(ADMIN, autocommit=True, row_factory=dict_row)


def snapshot(stack: EnvoiStack) -> tuple[dict, dict]:
    with stack.connect() as conn:
        tables = {r["relname"]: r for r in conn.execute(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables").fetchall()}
    with admin() as conn:
        wal = conn.execute("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal").fetchone()
    return tables, wal


def reset(stack: EnvoiStack) -> tuple[dict, dict, float]:
    stack.vacuum()
    with admin() as conn:
        conn.execute("SELECT pg_stat_statements_reset()")
    return (*snapshot(stack), stack.postgres_cpu())


def report(label: str, stack: EnvoiStack, before: tuple[dict, dict, float], count: int) -> None:
    cpu = (stack.postgres_cpu() - before[2]) * 1000 / count
    time.sleep(1.5)  # backends report their table counts within a second of going idle
    tables, wal = snapshot(stack)
    print(f"\n===== {label}: {count} messages, Postgres backends {cpu:.3f} ms/msg")
    records, fpi, size = ((float(wal[k]) - float(before[1][k])) / count for k in ("wal_records", "wal_fpi", "wal_bytes"))
    print(f"WAL per message: records {records:.1f}, full-page images {fpi:.2f}, bytes {size:.0f}")
    for name, row in sorted(tables.items()):
        old = before[0].get(name, {})
        d = {k: (row[k] - old.get(k, 0)) / count for k in ("n_tup_ins", "n_tup_upd", "n_tup_hot_upd", "n_tup_del")}
        if any(d.values()):
            print(f"  {name:28} inserted {d['n_tup_ins']:.2f} updated {d['n_tup_upd']:.2f}"
                  f" (HOT {d['n_tup_hot_upd']:.2f}) deleted {d['n_tup_del']:.2f}")
    with admin() as conn:
        dbid = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (stack.dbname,)).fetchone()["oid"]
        total = conn.execute("SELECT sum(total_exec_time) AS t, sum(total_plan_time) AS p, sum(calls) AS c,"
                             " sum(plans) AS n FROM pg_stat_statements WHERE dbid = %s", (dbid,)).fetchone()
        # total_plan_time is 0 unless pg_stat_statements.track_planning is on.
        print(f"  statements: {float(total['t']) / count * 1000:.1f} us/msg executing,"
              f" {float(total['p']) / count * 1000:.1f} planning ({float(total['n']) / count:.2f} plans/msg),"
              f" {float(total['c']) / count:.2f} calls/msg")
        for r in conn.execute("SELECT calls, plans, total_exec_time, total_plan_time, rows, wal_bytes, query"
                              " FROM pg_stat_statements WHERE dbid = %s"
                              " ORDER BY total_exec_time + total_plan_time DESC LIMIT 12", (dbid,)).fetchall():
            print(f"  {r['total_exec_time'] / count * 1000:7.1f} us/msg (+{r['total_plan_time'] / count * 1000:5.1f}"
                  f" planning, {r['plans'] / count:5.3f} plans/msg) {r['calls'] / count:6.3f} calls/msg"
                  f" {r['rows'] / count:5.2f} rows/msg {float(r['wal_bytes']) / count:6.0f} WAL B/msg"
                  f" | {' '.join(r['query'].split())[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=".", help="the checkout whose region is measured (set PYTHONPATH to it)")
    parser.add_argument("--n", type=int, default=4000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="envoi-pgpath-"))
    sink = SmtpSink(workdir).start()
    stack = EnvoiStack(workdir / "envoi", sink.port, processes=("relay", "api"), root=Path(args.root).resolve())
    try:
        relay = warm_then_pause_relay(stack.setup(), sink)
        warmed = stack.accepted()
        inject_wrk(stack.api_port, stack.api_key, "urlencoded", 2000, f"warm2-{uuid.uuid4().hex[:6]}")
        before = reset(stack)
        accepted = stack.accepted()
        inject_wrk(stack.api_port, stack.api_key, "urlencoded", args.n, f"run-{uuid.uuid4().hex[:6]}")
        count = stack.accepted() - accepted
        report("ACCEPT", stack, before, count)
        before = reset(stack)
        queued = stack.accepted() - warmed
        base = sink.count()
        os.kill(relay, signal.SIGCONT)
        sink.wait_count(base + queued)
        report("DRAIN (every queued message)", stack, before, queued)
    finally:
        stack.stop()
        sink.stop()


if __name__ == "__main__":
    main()
