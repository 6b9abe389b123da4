"""Suppression entries leave the clear: each list keeps the address (the allowlist: its value) sealed with
the region key, bound to its table and domain, plus an HMAC of the lower-cased value under
ENVOI_LOOKUP_KEY to find it; the plaintext column is dropped. An entry whose sealed copy is NULL is an
erased person's: it still suppresses (found by its hash) and holds nothing readable.

The hash and the sealing context are envoi.suppression.sealed_address's as of this migration, copied
here so the migration keeps meaning what it did when that module changes.
"""

import hashlib
import hmac

_LISTS = (("suppress_bounces", "address"), ("suppress_unsubscribes", "address"),
          ("suppress_complaints", "address"), ("suppress_whitelists", "value"))
_BATCH = 1000


def _lookup(key, value):
    return hmac.new(key, b"envoi/suppression-address/v1\x00" + value.lower().encode(), hashlib.sha256).digest()


def apply(conn, sealer, lookup_key):
    for table, column in _LISTS:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}_hash bytea, ADD COLUMN {column}_sealed bytea")
        if conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None and (
                sealer is None or lookup_key is None):
            raise RuntimeError("migration 0110 seals stored suppression addresses: run it with the region keys "
                               "(`envoi migrate` with ENVOI_SECRET_KEY and ENVOI_LOOKUP_KEY set)")
        last = None
        while True:
            rows = conn.execute(
                f"SELECT domain_id, {column} AS value FROM {table}"
                f" WHERE (%s::bigint IS NULL OR (domain_id, {column}) > (%s, %s))"
                f" ORDER BY domain_id, {column} LIMIT %s",
                (last and last[0], last and last[0], last and last[1], _BATCH)).fetchall()
            if not rows:
                break
            last = (rows[-1]["domain_id"], rows[-1]["value"])
            updates = [(_lookup(lookup_key, r["value"]),
                        sealer.seal(r["value"].lower().encode(), f"{table}:{r['domain_id']}".encode()),
                        r["domain_id"], r["value"]) for r in rows]
            with conn.cursor() as cur:
                cur.executemany(f"UPDATE {table} SET {column}_hash = %s, {column}_sealed = %s"
                                f" WHERE domain_id = %s AND {column} = %s", updates)
        conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.execute(f"ALTER TABLE {table} ALTER COLUMN {column}_hash SET NOT NULL")
        conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (domain_id, {column}_hash)")
