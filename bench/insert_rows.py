"""A group commit's few rows: one pipelined INSERT per row (executemany, before) against insert_columns.

    .venv/bin/python bench/insert_rows.py [--rows 8] [--size 5000] [--n 600] [--rounds 6]

In one process against the local Postgres: a scratch UNLOGGED table with a message row's kinds of column
(bigints, text, timestamps, a `size`-byte bytea), `n` transactions in pipeline mode (as Intake._write
sends them) of `rows` rows, twice each (two tables' worth). Before: executemany of a one-row
`INSERT ... SELECT ... FROM (VALUES (%b::type, ...))`, prepared, as insert_columns sent up to
SMALL_INSERT rows until branch apicut2; now: envoi.infra.db.insert_columns (one multi-row VALUES with $n
placeholders). Rounds alternate which goes first. Printed per row: this process's CPU and its Postgres
backend's CPU, medians of the rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import UTC, datetime

import psycopg

from envoi.infra.db import insert_columns

DSN = os.environ.get("ENVOI_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TABLE = f"bench_insert_rows_{os.getpid()}"
COLUMNS = (("a", "bigint"), ("b", "bigint"), ("c", "bigint"), ("d", "text"), ("e", "text"), ("f", "timestamptz"),
           ("g", "timestamptz"), ("h", "bytea"), ("i", "text"), ("j", "text"), ("k", "text"), ("l", "int"))
NAMES = ", ".join(name for name, _ in COLUMNS)


def per_row(conn: psycopg.Connection, rows: list[tuple]) -> None:
    one = ", ".join(f"%b::{kind}" for _, kind in COLUMNS)
    conn.cursor().executemany(f"INSERT INTO {TABLE} ({NAMES}) SELECT * FROM (VALUES ({one})) AS u({NAMES})", rows)


def now_way(conn: psycopg.Connection, rows: list[tuple]) -> None:
    insert_columns(conn, TABLE, COLUMNS, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    conn = psycopg.connect(DSN, autocommit=True)
    conn.execute(f"CREATE UNLOGGED TABLE {TABLE} (" + ", ".join(f"{n} {t}" for n, t in COLUMNS) + ")")
    pid = conn.info.backend_pid

    def backend_cpu() -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rows() -> list[tuple]:
        at = datetime.now(UTC)
        return [(i, 2, 3, f"rcpt{i}@example.net", "example.net", at, at, os.urandom(args.size), '{"x": 1}', "[]",
                 "hello", 5) for i in range(args.rows)]

    results: dict[str, list[tuple[float, float]]] = {"per row (before)": [], "insert_columns (now)": []}
    ways = [("per row (before)", per_row), ("insert_columns (now)", now_way)]
    try:
        for r in range(args.rounds):
            for name, way in ways if r % 2 == 0 else ways[::-1]:
                batches = [rows() for _ in range(args.n)]
                cpu0, pg0 = time.process_time(), backend_cpu()
                for batch in batches:
                    with conn.transaction(), conn.pipeline():
                        way(conn, batch)
                        way(conn, batch)
                count = args.n * args.rows * 2
                results[name].append(((time.process_time() - cpu0) / count * 1e6,
                                      (backend_cpu() - pg0) / count * 1e6))
            conn.execute(f"TRUNCATE {TABLE}")
    finally:
        conn.execute(f"DROP TABLE {TABLE}")
    for name, values in results.items():
        print(f"{name:22s} client {statistics.median(c for c, _ in values):6.1f} us/row   postgres "
              f"{statistics.median(p for _, p in values):6.1f} us/row   (client per round: "
              f"{', '.join(f'{c:.0f}' for c, _ in values)})")


if __name__ == "__main__":
    main()
