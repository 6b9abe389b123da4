"""SQL for the suppression lists (bounces, unsubscribes, complaints, whitelists).

Entries are keyed by (domain_id, hash of the value); the value itself is only sealed (see
sealed_address). `sealed` is NULL for an erased person's entry.
"""

from __future__ import annotations

from envoi.infra.db import Connection

#: list name -> (table, value column prefix: <prefix>_hash, <prefix>_sealed)
TABLES = {
    "bounces": ("suppress_bounces", "address"),
    "unsubscribes": ("suppress_unsubscribes", "address"),
    "complaints": ("suppress_complaints", "address"),
    "whitelists": ("suppress_whitelists", "value"),
}


def _cols(kind: str) -> tuple[str, str, str]:
    table, prefix = TABLES[kind]
    return table, f"{prefix}_hash", f"{prefix}_sealed"


def page(conn: Connection, kind: str, domain_id: int, *, pivot: bytes | None, ascending: bool,
         limit: int) -> list[dict]:
    """Readable entries (erased ones have nothing to show) in the order of their hashes: after `pivot`
    (ascending) or before it (descending). A range scan of the primary key: a page costs its own size,
    whatever the list's."""
    table, key, sealed = _cols(kind)
    where, args = [f"domain_id = %s AND {sealed} IS NOT NULL"], [domain_id]
    if pivot is not None:
        where.append(f"{key} > %s" if ascending else f"{key} < %s")
        args.append(pivot)
    order = "ASC" if ascending else "DESC"
    args.append(limit)
    return conn.execute(f"SELECT *, {key} AS hash, {sealed} AS sealed FROM {table} WHERE {' AND '.join(where)}"
                        f" ORDER BY {key} {order} LIMIT %s", args).fetchall()


def get(conn: Connection, kind: str, domain_id: int, lookup: bytes) -> dict | None:
    table, key, sealed = _cols(kind)
    return conn.execute(f"SELECT *, {sealed} AS sealed FROM {table} WHERE domain_id = %s AND {key} = %s",
                        (domain_id, lookup)).fetchone()


def delete(conn: Connection, kind: str, domain_id: int, lookup: bytes) -> bool:
    table, key, _ = _cols(kind)
    return conn.execute(f"DELETE FROM {table} WHERE domain_id = %s AND {key} = %s", (domain_id, lookup)).rowcount > 0


def delete_all(conn: Connection, kind: str, domain_id: int) -> int:
    table, _, _ = _cols(kind)
    return conn.execute(f"DELETE FROM {table} WHERE domain_id = %s", (domain_id,)).rowcount


# Writing an entry again (a new bounce, an API add, an unsubscribe) seals the value again: after an
# erasure that is new data about the person, given by a new event or by the customer.

def upsert_bounces(conn: Connection, rows: list[tuple]) -> None:
    """rows: (domain_id, hash, sealed, code, error, created_at or None)."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO suppress_bounces (domain_id, address_hash, address_sealed, code, error, created_at)"
            " VALUES (%s, %s, %s, %s, %s, coalesce(%s, now()))"
            " ON CONFLICT (domain_id, address_hash) DO UPDATE SET address_sealed = EXCLUDED.address_sealed,"
            " code = EXCLUDED.code, error = EXCLUDED.error, created_at = EXCLUDED.created_at", rows)


def upsert_unsubscribes(conn: Connection, rows: list[tuple]) -> None:
    """rows: (domain_id, hash, sealed, tags, created_at or None). Tags are merged; '*' absorbs the rest."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO suppress_unsubscribes (domain_id, address_hash, address_sealed, tags, created_at)"
            " VALUES (%s, %s, %s, %s, coalesce(%s, now()))"
            " ON CONFLICT (domain_id, address_hash) DO UPDATE SET address_sealed = EXCLUDED.address_sealed,"
            " tags = CASE"
            "   WHEN '*' = ANY(suppress_unsubscribes.tags) OR '*' = ANY(EXCLUDED.tags) THEN '{*}'::text[]"
            "   ELSE ARRAY(SELECT DISTINCT unnest(suppress_unsubscribes.tags || EXCLUDED.tags) ORDER BY 1) END",
            rows)


def remove_unsubscribe_tag(conn: Connection, domain_id: int, lookup: bytes, tag: str) -> bool:
    row = conn.execute("UPDATE suppress_unsubscribes SET tags = array_remove(tags, %s)"
                       " WHERE domain_id = %s AND address_hash = %s AND %s = ANY(tags) RETURNING tags",
                       (tag, domain_id, lookup, tag)).fetchone()
    if row is None:
        return False
    if not row["tags"]:
        delete(conn, "unsubscribes", domain_id, lookup)
    return True


def upsert_complaints(conn: Connection, rows: list[tuple]) -> None:
    """rows: (domain_id, hash, sealed, created_at or None)."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO suppress_complaints (domain_id, address_hash, address_sealed, created_at)"
            " VALUES (%s, %s, %s, coalesce(%s, now()))"
            " ON CONFLICT (domain_id, address_hash) DO UPDATE SET address_sealed = EXCLUDED.address_sealed,"
            " created_at = EXCLUDED.created_at", rows)


def upsert_whitelists(conn: Connection, rows: list[tuple]) -> None:
    """rows: (domain_id, hash, sealed, type, reason)."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO suppress_whitelists (domain_id, value_hash, value_sealed, type, reason)"
            " VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (domain_id, value_hash) DO UPDATE SET value_sealed = EXCLUDED.value_sealed,"
            " type = EXCLUDED.type, reason = EXCLUDED.reason", rows)


def matches(conn: Connection, probes: list[tuple[int, bytes, bytes]]) -> dict[str, dict[tuple[int, bytes], object]]:
    """For (domain_id, address hash, recipient-domain hash) probes, what each list holds: one statement
    for all four lists, each an index lookup on its primary key (the relay asks at every claim, so round
    trips and parameter encoding count)."""
    domain_ids = [d for d, _, _ in probes]
    # The hashes travel as one bytea each (sliced in SQL): adapting a bytea[] of a hundred values costs
    # the relay more than the lookups themselves.
    hashes = b"".join(h for _, h, _ in probes)
    rcpt_domains = b"".join(d for _, _, d in probes)
    found: dict[str, dict] = {"bounces": {}, "unsubscribes": {}, "complaints": {}, "whitelists": {}}
    # LATERAL ... LIMIT 1 (the key is unique; the LIMIT keeps the planner from flattening it into a
    # hash join that reads the whole table): each probe is one primary-key lookup, whatever the size
    # of the lists.
    rows = conn.execute(
        "WITH p AS (SELECT i, (%s::bigint[])[i + 1] AS domain_id, substring(%s::bytea FROM i * 32 + 1 FOR 32) AS h,"
        "  substring(%s::bytea FROM i * 32 + 1 FOR 32) AS d FROM generate_series(0, %s - 1) AS i)"
        " SELECT 'bounces' AS kind, p.i, NULL::text[] AS tags FROM p, LATERAL (SELECT 1 FROM"
        "  suppress_bounces t WHERE t.domain_id = p.domain_id AND t.address_hash = p.h LIMIT 1) t"
        " UNION ALL SELECT 'unsubscribes', p.i, t.tags FROM p, LATERAL (SELECT tags FROM"
        "  suppress_unsubscribes t WHERE t.domain_id = p.domain_id AND t.address_hash = p.h LIMIT 1) t"
        " UNION ALL SELECT 'complaints', p.i, NULL FROM p, LATERAL (SELECT 1 FROM"
        "  suppress_complaints t WHERE t.domain_id = p.domain_id AND t.address_hash = p.h LIMIT 1) t"
        " UNION ALL SELECT 'whitelists', p.i, NULL FROM p, LATERAL (SELECT 1 FROM suppress_whitelists w"
        "  WHERE w.domain_id = p.domain_id AND w.value_hash IN (p.h, p.d) AND w.type ="
        "   CASE WHEN w.value_hash = p.h THEN 'address' ELSE 'domain' END LIMIT 1) w",
        (domain_ids, hashes, rcpt_domains, len(probes)),
    )
    for row in rows:  # rows name their probe by position: no hash comes back to be decoded
        domain_id, h, _ = probes[row["i"]]
        found[row["kind"]][(domain_id, h)] = row["tags"] if row["kind"] == "unsubscribes" else 1
    return found


def entries_for(conn: Connection, account_id: int, lookup: bytes) -> list[dict]:
    """Every suppression entry of an account's domains for this hash (erased or not)."""
    rows = []
    for kind in TABLES:
        table, key, sealed = _cols(kind)
        for row in conn.execute(
            f"SELECT s.*, s.{sealed} AS sealed, d.name AS domain FROM {table} s JOIN domains d ON d.id = s.domain_id"
            f" WHERE d.account_id = %s AND s.{key} = %s", (account_id, lookup)):
            rows.append({"list": kind, "table": table, **row})
    return rows


def erase(conn: Connection, account_id: int, lookup: bytes) -> int:
    """Drop the sealed value of the account's entries for this hash; the entries (and so the
    suppression) stay. Bounce errors are the remote server's words, which may quote the address."""
    erased = 0
    for kind in TABLES:
        table, key, sealed = _cols(kind)
        extra = ", error = ''" if kind == "bounces" else ", reason = ''" if kind == "whitelists" else ""
        erased += conn.execute(
            f"UPDATE {table} s SET {sealed} = NULL{extra} FROM domains d WHERE d.id = s.domain_id"
            f" AND d.account_id = %s AND s.{key} = %s AND s.{sealed} IS NOT NULL", (account_id, lookup)).rowcount
    return erased
