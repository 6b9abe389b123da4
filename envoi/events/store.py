"""SQL for the events table (partitioned by UTC day), its partitions, and the stats/tag rollups."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, time, timedelta

from psycopg import sql

from envoi.infra.db import Connection, insert_columns, like_escape

_EVENT_COLUMNS = (("event_id", "text"), ("account_id", "bigint"), ("domain_id", "bigint"), ("message_pk", "bigint"),
                  ("event", "text"), ("severity", "text"), ("recipient", "text"), ("message_id", "text"),
                  ("ts", "timestamptz"), ("data", "text"), ("sender", "text"), ("subject", "text"), ("tags", "jsonb"))
_EVENT_EXPRESSIONS = {"data": "u.data::jsonb", "tags": "ARRAY(SELECT jsonb_array_elements_text(u.tags))"}
_EVENT_COPY = {"data": "jsonb", "tags": "text[]"}  # the expressions' types, for COPY (insert_columns)
PARTITION = re.compile(r"^events_p(\d{8})$")
MAINTENANCE_LOCK = 0x656E766F6C6F67  # "envolog": one partition maintainer at a time


def insert_many(conn: Connection, rows: list[tuple]) -> None:
    """rows: (event_id, account_id, domain_id, message_pk, event, severity, recipient, message_id, ts, data,
    data as JSON text).

    sender, subject and tags are copied out of data into their own columns for filtering.
    """
    params = []
    tag_lists: dict[tuple, str] = {}  # PERF: a batch's events share a few tag lists: each one's JSON made once
    for row in rows:
        data = row[9]
        headers = (data.get("message") or {}).get("headers") or {}
        tags = tuple(map(str, data.get("tags") or ()))
        tags_json = tag_lists.get(tags)
        if tags_json is None:
            tags_json = tag_lists[tags] = json.dumps(list(tags))
        params.append(row[:9] + (row[10], headers.get("from"), headers.get("subject"), tags_json))
    insert_columns(conn, "events", _EVENT_COLUMNS, params, expressions=_EVENT_EXPRESSIONS, copy_as=_EVENT_COPY)


def query(
    conn: Connection,
    domain_id: int,
    *,
    begin: datetime | None,
    end: datetime | None,
    ascending: bool,
    conditions: list[tuple[str, list]],
    after: tuple[datetime, int] | None,
    limit: int,
    inclusive: bool = False,
) -> list[dict]:
    """One page in (ts, id) order, `data` as JSON text; `after` is the keyset cursor in the page's
    direction (exclusive unless `inclusive`)."""
    where = ["domain_id = %s"]
    args: list = [domain_id]
    if begin is not None:
        where.append("ts >= %s")
        args.append(begin)
    if end is not None:
        where.append("ts <= %s")
        args.append(end)
    for condition, values in conditions:
        where.append(condition)
        args.extend(values)
    if after is not None:
        op = (">" if ascending else "<") + ("=" if inclusive else "")
        where.append(f"(ts, id) {op} (%s, %s)")
        args.extend(after)
    order = "ASC" if ascending else "DESC"
    args.append(limit)
    return conn.execute(
        f"SELECT id, ts, data::text AS data FROM events WHERE {' AND '.join(where)}"
        f" ORDER BY ts {order}, id {order} LIMIT %s",
        args,
    ).fetchall()


def message_events(conn: Connection, domain_id: int, message_id: str, since: datetime | None) -> list[dict]:
    text = "SELECT id, ts, event, severity, recipient, data FROM events WHERE domain_id = %s AND message_id = %s"
    args: list = [domain_id, message_id]
    if since is not None:
        text += " AND ts >= %s"
        args.append(since)
    return conn.execute(text + " ORDER BY ts, id", args).fetchall()


def message_methods(conn: Connection, message_pks: list[int]) -> dict[int, str]:
    rows = conn.execute("SELECT id, method FROM messages WHERE id = ANY(%s)", (message_pks,)).fetchall()
    return {r["id"]: r["method"] for r in rows}


def account_plan(conn: Connection, account_id: int) -> str | None:
    row = conn.execute("SELECT plan FROM accounts WHERE id = %s", (account_id,)).fetchone()
    return row["plan"] if row else None


# partitions ---------------------------------------------------------------------------------------
def partition_name(day: date) -> str:
    return f"events_p{day:%Y%m%d}"


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), UTC)
    return start, start + timedelta(days=1)


def partitions(conn: Connection) -> dict[date, str]:
    """The daily partitions that exist now (the default partition is not listed)."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'events'::regclass"
    ).fetchall()
    out = {}
    for row in rows:
        if m := PARTITION.match(row["relname"]):
            out[datetime.strptime(m.group(1), "%Y%m%d").date()] = row["relname"]
    return out


def maintenance_lock(conn: Connection, wait: bool) -> bool:
    """A session-level lock: one maintainer at a time across processes."""
    if wait:
        conn.execute("SELECT pg_advisory_lock(%s)", (MAINTENANCE_LOCK,))
        return True
    return conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (MAINTENANCE_LOCK,)).fetchone()["ok"]


def maintenance_unlock(conn: Connection) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s)", (MAINTENANCE_LOCK,))


def default_days(conn: Connection) -> list[date]:
    """Days that have rows waiting in the default partition."""
    rows = conn.execute(
        "SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date AS day FROM events_default ORDER BY 1"
    ).fetchall()
    return [r["day"] for r in rows]


def create_partition(conn: Connection, day: date) -> None:
    """Create the partition of `day`, moving any of its rows out of the default partition first."""
    name = partition_name(day)
    start, end = day_bounds(day)
    conn.execute("SET LOCAL lock_timeout = '10s'")
    # Writers wait (briefly) at the parent until the partition is attached. Locking only the default
    # partition is not enough: Postgres routes a row with the partition list read when the INSERT starts,
    # and once it gets the default partition's lock rechecks its (now narrower) constraint, failing the
    # writer's whole transaction. SHARE blocks inserts, not reads.
    conn.execute("LOCK TABLE events IN SHARE MODE")
    conn.execute("LOCK TABLE events_default IN ACCESS EXCLUSIVE MODE")
    conn.execute(f"CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    conn.execute(
        f"WITH moved AS (DELETE FROM events_default WHERE ts >= %s AND ts < %s RETURNING *)"
        f" INSERT INTO {name} SELECT * FROM moved", (start, end))
    conn.execute(sql.SQL("ALTER TABLE events ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
        sql.Identifier(name), sql.Literal(start), sql.Literal(end)))


def drop_partition(conn: Connection, day: date) -> None:
    conn.execute("SET LOCAL lock_timeout = '10s'")
    conn.execute(f"DROP TABLE IF EXISTS {partition_name(day)}")


def delete_default_before(conn: Connection, cutoff: datetime) -> int:
    return conn.execute("DELETE FROM events_default WHERE ts < %s", (cutoff,)).rowcount


def plans_in_use(conn: Connection) -> list[str]:
    return [r["plan"] for r in conn.execute("SELECT DISTINCT plan FROM accounts").fetchall()]


def domains_of_plan(conn: Connection, plan: str) -> list[int]:
    rows = conn.execute(
        "SELECT d.id FROM domains d JOIN accounts a ON a.id = d.account_id WHERE a.plan = %s", (plan,)
    ).fetchall()
    return [r["id"] for r in rows]


def delete_domain_events_before(conn: Connection, domain_ids: list[int], cutoff: datetime,
                                not_before: datetime | None) -> int:
    text = "DELETE FROM events WHERE domain_id = ANY(%s) AND ts < %s"
    args: list = [domain_ids, cutoff]
    if not_before is not None:
        text += " AND ts >= %s"
        args.append(not_before)
    return conn.execute(text, args).rowcount


# rollups ------------------------------------------------------------------------------------------
def add_stats(conn: Connection, rows: list[tuple]) -> None:
    """rows: (domain_id, account_id, tag, hour, event, severity, reason, method, count, last_ts).

    Appends only: concurrent recorders never wait on each other's counters (see fold_stats)."""
    insert_columns(conn, "event_stats_pending", (("domain_id", "bigint"), ("account_id", "bigint"), ("tag", "text"),
                                                 ("hour", "timestamptz"), ("event", "text"), ("severity", "text"),
                                                 ("reason", "text"), ("method", "text"), ("count", "bigint"),
                                                 ("last_ts", "timestamptz")), rows)


def add_tags(conn: Connection, rows: list[tuple]) -> None:
    """rows: (domain_id, account_id, tag, seen). A known tag is left alone (no row lock is taken);
    its last-seen moves forward when the pending counts are folded."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO event_tags (domain_id, account_id, tag, first_seen, last_seen)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (domain_id, tag) DO NOTHING",
            [(d, a, t, seen, seen) for d, a, t, seen in rows],
        )


STATS_FOLD_LOCK = 0x656E7673746174  # "envstat"


def fold_stats(conn: Connection) -> int | None:
    """Move pending counts into the hourly rollup (and tags' last-seen); None if another process
    is folding right now. Returns the number of hourly rows touched."""
    if not conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS ok", (STATS_FOLD_LOCK,)).fetchone()["ok"]:
        return None
    return conn.execute(
        "WITH moved AS (DELETE FROM event_stats_pending RETURNING *),"
        " agg AS (SELECT domain_id, max(account_id) AS account_id, tag, hour, event, severity, reason, method,"
        "   sum(count) AS count FROM moved GROUP BY domain_id, tag, hour, event, severity, reason, method),"
        " ins AS (INSERT INTO event_stats_hourly (domain_id, account_id, tag, hour, event, severity, reason,"
        "   method, count) SELECT * FROM agg ORDER BY domain_id, tag, hour, event, severity, reason, method"
        "   ON CONFLICT (domain_id, tag, hour, event, severity, reason, method)"
        "   DO UPDATE SET count = event_stats_hourly.count + EXCLUDED.count RETURNING 1),"
        " seen AS (UPDATE event_tags t SET last_seen = GREATEST(t.last_seen, m.last_ts)"
        "   FROM (SELECT domain_id, tag, max(last_ts) AS last_ts FROM moved WHERE tag <> ''"
        "         GROUP BY domain_id, tag) m"
        "   WHERE t.domain_id = m.domain_id AND t.tag = m.tag RETURNING 1)"
        " SELECT (SELECT count(*) FROM ins) + 0 * (SELECT count(*) FROM seen) AS n"
    ).fetchone()["n"]


def coarsen_stats(conn: Connection, unit: str, before: datetime) -> int:
    """Merge the rollup rows of buckets that start before `before` into `unit` ('day' or 'month')
    buckets (the hour column then holds the UTC start of the day or month); returns rows merged away.
    Day and month totals are unchanged: each count moves within its own day and month."""
    if unit not in ("day", "month"):
        raise ValueError(unit)
    bucket = f"date_trunc('{unit}', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    return conn.execute(
        f"WITH old AS (DELETE FROM event_stats_hourly WHERE hour < %s AND hour <> {bucket} RETURNING *),"
        f" ins AS (INSERT INTO event_stats_hourly (domain_id, account_id, tag, hour, event, severity, reason,"
        f"   method, count) SELECT domain_id, max(account_id), tag, {bucket}, event, severity, reason, method,"
        f"   sum(count) FROM old GROUP BY domain_id, tag, {bucket}, event, severity, reason, method"
        "   ORDER BY 1, 3, 4, 5, 6, 7, 8"
        "   ON CONFLICT (domain_id, tag, hour, event, severity, reason, method)"
        "   DO UPDATE SET count = event_stats_hourly.count + EXCLUDED.count RETURNING 1)"
        " SELECT (SELECT count(*) FROM old) - (SELECT count(*) FROM ins) AS n",
        (before,),
    ).fetchone()["n"]


def stats(conn: Connection, domain_ids: list[int], tag: str, events: list[str], start: datetime, end: datetime,
          resolution: str) -> list[dict]:
    where = "domain_id = ANY(%s) AND tag = %s AND event = ANY(%s) AND hour >= %s AND hour < %s"
    args = (domain_ids, tag, events, start, end)
    return conn.execute(
        "SELECT date_trunc(%s, hour AT TIME ZONE 'UTC') AS bucket, event, severity, reason, method,"
        " sum(count)::bigint AS count FROM ("
        f" SELECT hour, event, severity, reason, method, count FROM event_stats_hourly WHERE {where}"
        f" UNION ALL SELECT hour, event, severity, reason, method, count FROM event_stats_pending WHERE {where}"
        ") s GROUP BY 1, 2, 3, 4, 5",
        (resolution, *args, *args),
    ).fetchall()


def list_tags(conn: Connection, domain_id: int, *, prefix: str, after: str | None, before: str | None,
              limit: int) -> list[dict]:
    where = ["domain_id = %s"]
    args: list = [domain_id]
    if prefix:
        where.append("tag LIKE %s")
        args.append(like_escape(prefix) + "%")
    if after is not None:
        where.append("tag > %s")
        args.append(after)
    if before is not None:
        where.append("tag < %s")
        args.append(before)
    order = "DESC" if before is not None else "ASC"
    rows = conn.execute(
        f"SELECT tag, description, first_seen, last_seen FROM event_tags WHERE {' AND '.join(where)}"
        f" ORDER BY tag {order} LIMIT %s", args + [limit]).fetchall()
    return rows[::-1] if before is not None else rows


def get_tag(conn: Connection, domain_id: int, tag: str) -> dict | None:
    return conn.execute("SELECT tag, description, first_seen, last_seen FROM event_tags"
                        " WHERE domain_id = %s AND tag = %s", (domain_id, tag)).fetchone()


def set_tag_description(conn: Connection, domain_id: int, tag: str, description: str) -> bool:
    return conn.execute("UPDATE event_tags SET description = %s WHERE domain_id = %s AND tag = %s",
                        (description, domain_id, tag)).rowcount > 0


def delete_tag(conn: Connection, domain_id: int, tag: str) -> bool:
    conn.execute("DELETE FROM event_stats_hourly WHERE domain_id = %s AND tag = %s", (domain_id, tag))
    conn.execute("DELETE FROM event_stats_pending WHERE domain_id = %s AND tag = %s", (domain_id, tag))
    return conn.execute("DELETE FROM event_tags WHERE domain_id = %s AND tag = %s", (domain_id, tag)).rowcount > 0


def for_recipient(conn: Connection, account_id: int, address: str) -> list[dict]:
    return [r["data"] for r in conn.execute(
        "SELECT data FROM events WHERE account_id = %s AND lower(recipient) = %s ORDER BY ts, id",
        (account_id, address))]


def erase_recipient(conn: Connection, account_id: int, address: str) -> int:
    return conn.execute("DELETE FROM events WHERE account_id = %s AND lower(recipient) = %s",
                        (account_id, address)).rowcount
