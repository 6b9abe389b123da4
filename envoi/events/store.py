"""SQL for the events table."""

from __future__ import annotations

from datetime import datetime

from envoi.infra.db import Connection, Jsonb

INSERT = (
    "INSERT INTO events (event_id, account_id, domain_id, message_pk, event, severity, recipient,"
    " message_id, ts, data) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


def insert_many(conn: Connection, rows: list[tuple]) -> None:
    """rows: (event_id, account_id, domain_id, message_pk, event, severity, recipient, message_id, ts, data)."""
    with conn.cursor() as cur:
        cur.executemany(INSERT, [row[:-1] + (Jsonb(row[-1]),) for row in rows])


def query(
    conn: Connection,
    domain_id: int,
    *,
    begin: datetime | None,
    end: datetime | None,
    ascending: bool,
    filters: dict[str, list[str]],
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[dict]:
    where = ["domain_id = %s"]
    args: list = [domain_id]
    if begin is not None:
        where.append("ts >= %s")
        args.append(begin)
    if end is not None:
        where.append("ts <= %s")
        args.append(end)
    for column, values in filters.items():
        where.append(f"{column} = ANY(%s)")
        args.append(values)
    if after is not None:
        where.append("(ts, id) > (%s, %s)" if ascending else "(ts, id) < (%s, %s)")
        args.extend(after)
    order = "ASC" if ascending else "DESC"
    sql = (
        f"SELECT id, ts, data FROM events WHERE {' AND '.join(where)}"
        f" ORDER BY ts {order}, id {order} LIMIT %s"
    )
    args.append(limit)
    return conn.execute(sql, args).fetchall()
