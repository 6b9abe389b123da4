"""SQL for the suppression lists (bounces, unsubscribes, complaints, whitelists)."""

from __future__ import annotations

from envoi.infra.db import Connection

#: list name -> (table, key column)
TABLES = {
    "bounces": ("suppress_bounces", "address"),
    "unsubscribes": ("suppress_unsubscribes", "address"),
    "complaints": ("suppress_complaints", "address"),
    "whitelists": ("suppress_whitelists", "value"),
}


def page(conn: Connection, kind: str, domain_id: int, *, pivot: str | None, ascending: bool,
         limit: int, prefix: str | None = None) -> list[dict]:
    """Alphabetical page: after `pivot` (ascending) or before it (descending); only values that start
    with `prefix` if given."""
    table, key = TABLES[kind]
    where, args = ["domain_id = %s"], [domain_id]
    if prefix:
        where.append(f"starts_with({key}, %s)")
        args.append(prefix)
    if pivot is not None:
        where.append(f"{key} > %s" if ascending else f"{key} < %s")
        args.append(pivot)
    order = "ASC" if ascending else "DESC"
    args.append(limit)
    return conn.execute(f"SELECT * FROM {table} WHERE {' AND '.join(where)} ORDER BY {key} {order} LIMIT %s",
                        args).fetchall()


def get(conn: Connection, kind: str, domain_id: int, value: str) -> dict | None:
    table, key = TABLES[kind]
    return conn.execute(f"SELECT * FROM {table} WHERE domain_id = %s AND {key} = %s", (domain_id, value)).fetchone()


def delete(conn: Connection, kind: str, domain_id: int, value: str) -> bool:
    table, key = TABLES[kind]
    return conn.execute(f"DELETE FROM {table} WHERE domain_id = %s AND {key} = %s", (domain_id, value)).rowcount > 0


def delete_all(conn: Connection, kind: str, domain_id: int) -> int:
    table, _ = TABLES[kind]
    return conn.execute(f"DELETE FROM {table} WHERE domain_id = %s", (domain_id,)).rowcount


def upsert_bounces(conn: Connection, rows: list[tuple]) -> None:
    """rows: (domain_id, address, code, error, created_at or None)."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO suppress_bounces (domain_id, address, code, error, created_at)"
            " VALUES (%s, %s, %s, %s, coalesce(%s, now()))"
            " ON CONFLICT (domain_id, address) DO UPDATE SET code = EXCLUDED.code, error = EXCLUDED.error,"
            " created_at = EXCLUDED.created_at", rows)


def upsert_unsubscribes(conn: Connection, rows: list[tuple]) -> None:
    """rows: (domain_id, address, tags, created_at or None). Tags are merged; '*' absorbs the rest."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO suppress_unsubscribes (domain_id, address, tags, created_at)"
            " VALUES (%s, %s, %s, coalesce(%s, now()))"
            " ON CONFLICT (domain_id, address) DO UPDATE SET tags = CASE"
            "   WHEN '*' = ANY(suppress_unsubscribes.tags) OR '*' = ANY(EXCLUDED.tags) THEN '{*}'::text[]"
            "   ELSE ARRAY(SELECT DISTINCT unnest(suppress_unsubscribes.tags || EXCLUDED.tags) ORDER BY 1) END",
            rows)


def remove_unsubscribe_tag(conn: Connection, domain_id: int, address: str, tag: str) -> bool:
    row = conn.execute("UPDATE suppress_unsubscribes SET tags = array_remove(tags, %s)"
                       " WHERE domain_id = %s AND address = %s AND %s = ANY(tags) RETURNING tags",
                       (tag, domain_id, address, tag)).fetchone()
    if row is None:
        return False
    if not row["tags"]:
        delete(conn, "unsubscribes", domain_id, address)
    return True


def upsert_complaints(conn: Connection, rows: list[tuple]) -> None:
    """rows: (domain_id, address, created_at or None)."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO suppress_complaints (domain_id, address, created_at) VALUES (%s, %s, coalesce(%s, now()))"
            " ON CONFLICT (domain_id, address) DO UPDATE SET created_at = EXCLUDED.created_at", rows)


def upsert_whitelists(conn: Connection, rows: list[tuple]) -> None:
    """rows: (domain_id, value, type, reason)."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO suppress_whitelists (domain_id, value, type, reason) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (domain_id, value) DO UPDATE SET type = EXCLUDED.type, reason = EXCLUDED.reason",
            rows)


def matches(conn: Connection, pairs: list[tuple[int, str]]) -> dict[str, dict[tuple[int, str], object]]:
    """For (domain_id, address) pairs, what each list holds: one statement for all four lists (the
    relay asks at every claim, so round trips and parameter encoding count)."""
    domain_ids = [d for d, _ in pairs]
    addresses = [a for _, a in pairs]
    rcpt_domains = [a.rpartition("@")[2] for a in addresses]
    found: dict[str, dict] = {"bounces": {}, "unsubscribes": {}, "complaints": {}, "whitelists": {}}
    rows = conn.execute(
        "WITH p AS (SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS p(domain_id, address, d))"
        " SELECT 'bounces' AS kind, t.domain_id, t.address, NULL::text[] AS tags"
        "  FROM suppress_bounces t JOIN p ON p.domain_id = t.domain_id AND p.address = t.address"
        " UNION ALL SELECT 'unsubscribes', t.domain_id, t.address, t.tags"
        "  FROM suppress_unsubscribes t JOIN p ON p.domain_id = t.domain_id AND p.address = t.address"
        " UNION ALL SELECT 'complaints', t.domain_id, t.address, NULL"
        "  FROM suppress_complaints t JOIN p ON p.domain_id = t.domain_id AND p.address = t.address"
        " UNION ALL SELECT 'whitelists', p.domain_id, p.address, NULL FROM p JOIN suppress_whitelists w"
        "  ON w.domain_id = p.domain_id AND ((w.type = 'address' AND w.value = p.address)"
        "   OR (w.type = 'domain' AND w.value = p.d))",
        (domain_ids, addresses, rcpt_domains),
    )
    for row in rows:
        found[row["kind"]][(row["domain_id"], row["address"])] = row["tags"] if row["kind"] == "unsubscribes" else 1
    return found


def entries_for(conn: Connection, account_id: int, address: str) -> list[dict]:
    """Every suppression entry of an account's domains naming this address."""
    rows = []
    for kind, table, column in (("bounces", "suppress_bounces", "address"),
                                ("unsubscribes", "suppress_unsubscribes", "address"),
                                ("complaints", "suppress_complaints", "address"),
                                ("whitelists", "suppress_whitelists", "value")):
        for row in conn.execute(
            f"SELECT s.*, d.name AS domain FROM {table} s JOIN domains d ON d.id = s.domain_id"
            f" WHERE d.account_id = %s AND s.{column} = %s", (account_id, address)):
            rows.append({"list": kind, **row})
    return rows
