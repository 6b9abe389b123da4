"""Postgres access: one pool per process, transactions as context managers.

Stores take a connection and run SQL on it; callers own the transaction so several stores can
commit together (intake writes the message, its recipients and its events in one commit).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

Connection = psycopg.Connection
Cursor = psycopg.Cursor
IntegrityError = psycopg.errors.UniqueViolation
#: Postgres (or the driver) refused a value itself: NUL in text, a number out of range (SQLSTATE class 22).
DataError = psycopg.DataError


def is_data_error(error: BaseException) -> bool:
    """Postgres refused the values themselves (SQLSTATE classes 22 and 23), not the connection."""
    return isinstance(error, psycopg.DataError | psycopg.IntegrityError)
Jsonb = psycopg.types.json.Jsonb


class Database:
    """A region's Postgres: a small pool, handing out connections that return dict rows."""

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 10):
        self.dsn = dsn
        self.pool = ConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            kwargs={"row_factory": dict_row, "autocommit": False},
            open=True,
        )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """Yield a connection inside a transaction; commit on success, roll back on error."""
        with self.pool.connection() as conn:
            yield conn

    @contextlib.contextmanager
    def pipelined(self) -> Iterator[psycopg.Connection]:
        """transaction() in pipeline mode: statements go out without waiting for each other's results,
        so a batch waits on Postgres only where it reads a result, and once more at commit. COPY is not
        available inside (insert_columns is)."""
        with self.pool.connection() as conn, conn.pipeline():
            yield conn
            conn.commit()

    def close(self) -> None:
        self.pool.close()


def insert_columns(conn: psycopg.Connection, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[tuple],
                   *, expressions: Mapping[str, str] | None = None, returning: str | None = None) -> psycopg.Cursor:
    """INSERT many rows as one statement with one array parameter per column (`unnest`).

    columns: (name, Postgres type) pairs. expressions: SQL computing a column from the unnested
    values (`u.<name>`), for what cannot travel as an array of arrays (tags) or is derived server
    side. The statement text depends only on the table and columns, so psycopg prepares it once per
    connection; arrays go in binary, bodies unescaped; and unlike COPY it needs one round trip and
    runs inside a pipeline. Returns the cursor: its RETURNING rows are there once fetched (in a
    pipeline, after the next sync). Match them to `rows` by a key: SQL does not promise their order.
    """
    expressions = expressions or {}
    names = [name for name, _ in columns]
    arrays = ", ".join(f"%b::{kind}[]" for _, kind in columns)
    values = ", ".join(expressions.get(name, f"u.{name}") for name in names)
    query = (f"INSERT INTO {table} ({', '.join(names)}) SELECT {values} FROM unnest({arrays}) AS u({', '.join(names)})"
             + (f" RETURNING {returning}" if returning else ""))
    params = [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in names]
    cur = conn.cursor()
    cur.execute(query, params)
    return cur


def connect(dsn: str, autocommit: bool = True) -> psycopg.Connection:
    """A single connection outside the pool, for migrations and admin tools."""
    return psycopg.connect(dsn, autocommit=autocommit, row_factory=dict_row)
