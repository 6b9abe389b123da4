"""SQL of the analytics APIs: grouped counts from the stats rollups or the events table, the
account-level view of tags, and pages of the logs API. Read-only except tag description/deletion."""

from __future__ import annotations

from datetime import datetime

from envoi.infra.db import Connection, like_escape

#: events-table expression of each raw dimension (aliased by its name in the result rows)
EVENT_DIMENSIONS = {
    "domain": "e.domain_id",
    "tag": "t.tag",
    "ip": "e.data #>> '{envelope,sending-ip}'",
    "recipient_domain": "lower(e.data ->> 'recipient-domain')",
    "country": "e.data #>> '{geolocation,country}'",
    "device": "e.data #>> '{client-info,device-type}'",
    "bot": "e.data #>> '{client-info,bot}'",
}
ROLLUP_DIMENSIONS = {"domain": "domain_id", "tag": "tag"}
_TRUNC = {"hour": "hour", "day": "day", "month": "month"}


def account_domains(conn: Connection, account_id: int, *, include_subaccounts: bool = False) -> dict[int, str]:
    """The domains a query of this account may read: its own, and its subaccounts' when asked."""
    return {r["id"]: r["name"] for r in domain_owners(conn, account_id, include_subaccounts=include_subaccounts)}


def domain_owners(conn: Connection, account_id: int, *, include_subaccounts: bool) -> list[dict]:
    """id, name and account_id of the account's domains and, with include_subaccounts, of its
    subaccounts' (Mailgun's include_subaccounts); by id."""
    return conn.execute(
        "SELECT id, name, account_id FROM domains WHERE account_id IN"
        " (SELECT %s UNION ALL SELECT id FROM accounts WHERE parent_id = %s AND %s) ORDER BY id",
        (account_id, account_id, include_subaccounts)).fetchall()


def account_names(conn: Connection, account_ids: list[int]) -> dict[int, str]:
    return {r["id"]: r["name"] for r in conn.execute("SELECT id, name FROM accounts WHERE id = ANY(%s)",
                                                     (account_ids,))}


def rollup_groups(conn: Connection, domain_ids: list[int], dims: list[str], resolution: str, start: datetime,
                  end: datetime, *, tag: str | None, events: list[str] | None) -> list[dict]:
    """Rollup counts per (dims, event, severity, reason, method); hours in [start, end)."""
    trunc = _TRUNC[resolution]
    cols = [f"date_trunc('{trunc}', hour AT TIME ZONE 'UTC') AS time" if d == "time" else
            f"{ROLLUP_DIMENSIONS[d]} AS {d}" for d in dims]
    where = ["domain_id = ANY(%s)", "hour >= %s", "hour < %s"]
    args: list = [domain_ids, start, end]
    if "tag" in dims:
        where.append("tag <> ''")  # '' rows are the domain totals
    else:
        where.append("tag = %s")
        args.append(tag or "")
    if events is not None:
        where.append("event = ANY(%s)")
        args.append(events)
    cond = " AND ".join(where)
    source = "SELECT hour, domain_id, tag, event, severity, reason, method, count FROM {} WHERE " + cond
    select = ", ".join([*cols, "event", "severity", "reason", "method", "sum(count)::bigint AS n"])
    group = ", ".join(str(i) for i in range(1, len(cols) + 5))
    return conn.execute(
        f"SELECT {select} FROM ({source.format('event_stats_hourly')} UNION ALL"
        f" {source.format('event_stats_pending')}) s GROUP BY {group}", args + args).fetchall()


def event_groups(conn: Connection, domain_ids: list[int], dims: list[str], resolution: str, start: datetime,
                 end: datetime, *, unique: bool, tag_filters: list[tuple[str, list[str]]],
                 events: list[str] | None) -> list[dict]:
    """Counts of events per (dims, and the fields stats.dimensions classifies by); ts in [start, end).
    `uniq`: distinct (message, recipient) among opened/clicked events of the group."""
    trunc = _TRUNC[resolution]
    cols = [f"date_trunc('{trunc}', e.ts AT TIME ZONE 'UTC') AS time" if d == "time" else
            f"{EVENT_DIMENSIONS[d]} AS {d}" for d in dims]
    cols += ["e.event", "coalesce(e.severity, '') AS severity", "coalesce(e.data ->> 'reason', '') AS reason",
             "e.data #>> '{delivery-status,bounce-class}' AS bounce_class",
             "coalesce(e.data ->> 'method', '') AS method",
             "coalesce(e.data #>> '{flags,is-routed}', '') = 'true' AS routed",
             "e.data ? 'mailing-list' AS list"]
    ngroup = len(cols)
    cols.append("count(*) AS n")
    if unique:
        cols.append("count(DISTINCT coalesce(e.message_id, '') || ' ' || coalesce(e.recipient, ''))"
                    " FILTER (WHERE e.event IN ('opened', 'clicked')) AS uniq")
    where = ["e.domain_id = ANY(%s)", "e.ts >= %s", "e.ts < %s"]
    args: list = [domain_ids, start, end]
    if events is not None:
        where.append("e.event = ANY(%s)")
        args.append(events)
    for comparator, values in tag_filters:
        if comparator in ("=", "!="):
            cond = "e.tags && %s::text[]"
            args.append(values)
        else:
            cond = "EXISTS (SELECT 1 FROM unnest(e.tags) x WHERE x ILIKE ANY(%s))"
            args.append([f"%{like_escape(v)}%" for v in values])
        where.append(cond if comparator in ("=", "contains") else f"NOT ({cond})")
    lateral = " CROSS JOIN LATERAL unnest(e.tags) AS t(tag)" if "tag" in dims else ""
    return conn.execute(
        f"SELECT {', '.join(cols)} FROM events e{lateral} WHERE {' AND '.join(where)}"
        f" GROUP BY {', '.join(str(i) for i in range(1, ngroup + 1))}", args).fetchall()


# account-level tags -------------------------------------------------------------------------------------
def account_name(conn: Connection, account_id: int) -> str:
    row = conn.execute("SELECT name FROM accounts WHERE id = %s", (account_id,)).fetchone()
    return row["name"] if row else ""


def account_tags(conn: Connection, account_id: int, *, prefix: str, order: str, descending: bool, skip: int,
                 limit: int) -> tuple[list[dict], int]:
    """The account's tags over all its domains (first seen, last seen, a description) and how many match."""
    assert order in ("tag", "first_seen", "last_seen")
    where = "account_id = %s" + (" AND tag LIKE %s" if prefix else "")
    args: list = [account_id] + ([like_escape(prefix) + "%"] if prefix else [])
    direction = "DESC" if descending else "ASC"
    rows = conn.execute(
        f"SELECT tag, min(first_seen) AS first_seen, max(last_seen) AS last_seen,"
        f" max(description) AS description FROM event_tags WHERE {where} GROUP BY tag"
        f" ORDER BY {order} {direction}, tag LIMIT %s OFFSET %s", args + [limit, skip]).fetchall()
    total = conn.execute(f"SELECT count(DISTINCT tag) AS n FROM event_tags WHERE {where}", args).fetchone()["n"]
    return rows, total


def account_tag_count(conn: Connection, account_id: int) -> int:
    return conn.execute("SELECT count(DISTINCT tag) AS n FROM event_tags WHERE account_id = %s",
                        (account_id,)).fetchone()["n"]


def describe_account_tag(conn: Connection, account_id: int, tag: str, description: str) -> bool:
    """The description of the tag on every domain of the account (what /v3/{domain}/tags/{tag} shows)."""
    return conn.execute("UPDATE event_tags SET description = %s WHERE account_id = %s AND tag = %s",
                        (description, account_id, tag)).rowcount > 0


def delete_account_tag(conn: Connection, account_id: int, tag: str) -> bool:
    """As DELETE /v3/{domain}/tags/{tag} on each of the account's domains: the tag and its rollup rows."""
    domain_ids = [r["domain_id"] for r in conn.execute(
        "SELECT domain_id FROM event_tags WHERE account_id = %s AND tag = %s", (account_id, tag))]
    if not domain_ids:
        return False
    for table in ("event_stats_hourly", "event_stats_pending"):
        conn.execute(f"DELETE FROM {table} WHERE domain_id = ANY(%s) AND tag = %s", (domain_ids, tag))
    conn.execute("DELETE FROM event_tags WHERE domain_id = ANY(%s) AND tag = %s", (domain_ids, tag))
    return True


# logs ---------------------------------------------------------------------------------------------------
def logs_page(conn: Connection, domain_ids: list[int], *, begin: datetime, end: datetime, ascending: bool,
              conditions: list[tuple[str, list]], after: tuple[datetime, int] | None, limit: int) -> list[dict]:
    """One page of events of several domains in (ts, id) order; `after` is the exclusive keyset cursor."""
    where = ["domain_id = ANY(%s)", "ts >= %s", "ts <= %s"]
    args: list = [domain_ids, begin, end]
    for condition, values in conditions:
        where.append(condition)
        args.extend(values)
    if after is not None:
        where.append(f"(ts, id) {'>' if ascending else '<'} (%s, %s)")
        args.extend(after)
    order = "ASC" if ascending else "DESC"
    return conn.execute(
        f"SELECT id, ts, domain_id, account_id, data::text AS data FROM events WHERE {' AND '.join(where)}"
        f" ORDER BY ts {order}, id {order} LIMIT %s", args + [limit]).fetchall()


def logs_count(conn: Connection, domain_ids: list[int], *, begin: datetime, end: datetime,
               conditions: list[tuple[str, list]]) -> int:
    where = ["domain_id = ANY(%s)", "ts >= %s", "ts <= %s"]
    args: list = [domain_ids, begin, end]
    for condition, values in conditions:
        where.append(condition)
        args.extend(values)
    return conn.execute(f"SELECT count(*) AS n FROM events WHERE {' AND '.join(where)}", args).fetchone()["n"]


def account_plan(conn: Connection, account_id: int) -> str | None:
    row = conn.execute("SELECT plan FROM accounts WHERE id = %s", (account_id,)).fetchone()
    return row["plan"] if row else None
