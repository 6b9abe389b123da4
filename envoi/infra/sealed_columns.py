"""Where sealed values live, and re-sealing them under the current key online (key rotation).

SEALED is the one list of every column holding values sealed with the region's key (envoi.infra.crypto).
A new sealed column is one more line: its table, the table's unique key column, the column, and a SQL
expression over the row giving the sealing context exactly as the code that seals it builds it (text;
it is UTF-8 encoded). `envoi encryption status` counts each column's values per key id; `envoi
encryption rotate` re-seals every value not under the current key (docs/operations.md). A test
(tests/integration/infra/test_key_rotation.py) checks that every bytea column of the schema is either
listed here or known not to be sealed.

Rotation never holds a lock for long: each batch is read without locks, re-sealed outside any
transaction, then written in one short transaction with compare-and-set updates (`WHERE column =
the value read`): a value a writer changed meanwhile (an expired body, a new DKIM key) is left to
the writer, whose value is sealed under the current key already. Resuming is running it again:
values already under the current key are skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from envoi.infra.crypto import CannotOpen, Sealer
from envoi.infra.db import Database
from envoi.infra.settings import SettingsError


class MissingKey(SettingsError):
    """Data may be sealed under a key id this process was not given: it refuses to start."""


@dataclass(frozen=True)
class SealedColumn:
    table: str
    key: str  # the table's primary key: one column, or several separated by commas
    column: str  # bytea: NULL or a sealed value
    context: str  # SQL expression over the row: the sealing context, as text

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.key.split(","))


# Rotated in this order: a column whose values are copied from another in SQL comes after it
# (webhook_deliveries.url_sealed is copied from webhooks.url_sealed when an event is queued).
SEALED: tuple[SealedColumn, ...] = (
    SealedColumn("messages", "id", "body", "storage_key"),  # envoi.mta.intake
    SealedColumn("domains", "id", "dkim_private_key", "'dkim:' || name"),  # envoi.infra.dkim_keys
    SealedColumn("domains", "id", "dkim_pending_private_key", "'dkim:' || name"),
    SealedColumn("domains", "id", "dkim_ed25519_key", "'dkim-ed25519:' || name"),
    SealedColumn("dkim_keys", "id", "private_key",  # envoi.accounts.dkim: keys not signing yet
                 "CASE algorithm WHEN 'ed25519' THEN 'dkim-ed25519:' ELSE 'dkim:' END || signing_domain"),
    SealedColumn("webhooks", "id", "url_sealed", "'webhook-url:' || domain_id"),  # envoi.webhooks.secret_url
    SealedColumn("webhook_deliveries", "id", "url_sealed", "'webhook-url:' || domain_id"),
    SealedColumn("webhook_signing_keys", "account_id", "key_sealed",  # envoi.webhooks.service
                 "'webhook-signing-key:' || account_id"),
    SealedColumn("users", "id", "totp_secret", "'totp:' || id"),  # envoi.accounts.users
    SealedColumn("inbound_messages", "id", "raw", "storage_key"),  # envoi.mta.routes
    # envoi.suppression.sealed_address (their *_hash columns are keyed hashes, not sealed)
    SealedColumn("suppress_bounces", "domain_id, address_hash", "address_sealed", "'suppress_bounces:' || domain_id"),
    SealedColumn("suppress_unsubscribes", "domain_id, address_hash", "address_sealed",
                 "'suppress_unsubscribes:' || domain_id"),
    SealedColumn("suppress_complaints", "domain_id, address_hash", "address_sealed",
                 "'suppress_complaints:' || domain_id"),
    SealedColumn("suppress_whitelists", "domain_id, value_hash", "value_sealed", "'suppress_whitelists:' || domain_id"),
)

#: The key id reported for values sealed before key ids existed (sealed-data version 1).
UNIDENTIFIED = "(version 1, no id)"

# The key id of a sealed value, in SQL (envoi.infra.crypto's version-2 layout: 0x02, length, id).
_KEY_ID_SQL = ("CASE WHEN get_byte({c}, 0) = 2 THEN convert_from(substring({c} from 3 for get_byte({c}, 1)), "
               "'UTF8') ELSE '" + UNIDENTIFIED + "' END")


_PREFIX = 64  # bytes: the longest header (2 + 32) and the nonce (12) fit


def counts(db: Database, columns: tuple[SealedColumn, ...] = SEALED) -> dict[str, dict[str, int]]:
    """{column name: {key id: values sealed under it}} (a full scan of each table)."""
    out: dict[str, dict[str, int]] = {}
    for col in columns:
        with db.transaction() as conn:
            rows = conn.execute(f"SELECT {_KEY_ID_SQL.format(c=col.column)} AS key_id, count(*) AS n"
                                f" FROM {col.table} WHERE {col.column} IS NOT NULL GROUP BY 1 ORDER BY 1").fetchall()
        out[col.name] = {row["key_id"]: row["n"] for row in rows}
    return out


def stale(db: Database, sealer: Sealer, col: SealedColumn) -> int:
    """How many values of the column are not sealed under the current key."""
    with db.transaction() as conn:
        return conn.execute(f"SELECT count(*) AS n FROM {col.table} WHERE {col.column} IS NOT NULL"
                            f" AND substring({col.column} from 1 for %s) <> %s",
                            (len(sealer.header), sealer.header)).fetchone()["n"]


@dataclass
class Outcome:
    resealed: int = 0
    skipped: int = 0  # changed by a writer between read and write: the writer's value is current
    failed: int = 0  # could not be opened (unknown key id, or the wrong key or context)


def rotate(db: Database, sealer: Sealer, col: SealedColumn, *, batch: int = 200,
           progress: Callable[[int], None] = lambda n: None) -> Outcome:
    """Re-seal every value of the column not under the current key; progress(n) after each batch."""
    outcome = Outcome()
    keys = col.keys
    row_key = f"({', '.join(keys)})"
    select = (f"SELECT {', '.join(f'{k} AS k{i}' for i, k in enumerate(keys))}, {col.column} AS v,"
              f" ({col.context}) AS c FROM {col.table}"
              f" WHERE {col.column} IS NOT NULL AND substring({col.column} from 1 for %s) <> %s")
    # Compare-and-set on the value's first bytes: they hold its random nonce, so they tell one sealed
    # value from any other without sending a whole body back.
    update = (f"UPDATE {col.table} SET {col.column} = %s"
              f" WHERE {' AND '.join(f'{k} = %s' for k in keys)} AND substring({col.column} from 1 for {_PREFIX}) = %s")
    marks = f"({', '.join(['%s'] * len(keys))})"
    last: tuple | None = None
    while True:
        with db.transaction() as conn:  # a read: no row locks
            after, params = ("", ()) if last is None else (f" AND {row_key} > {marks}", last)
            rows = conn.execute(select + after + f" ORDER BY {', '.join(keys)} LIMIT %s",
                                (len(sealer.header), sealer.header, *params, batch)).fetchall()
        if not rows:
            return outcome
        last = tuple(rows[-1][f"k{i}"] for i in range(len(keys)))
        updates = []
        for row in rows:
            try:
                updates.append((sealer.reseal(row["v"], row["c"].encode()),
                                *(row[f"k{i}"] for i in range(len(keys))), bytes(row["v"][:_PREFIX])))
            except CannotOpen:  # counted and reported; the rest goes on
                outcome.failed += 1
        with db.transaction() as conn, conn.cursor() as cur:  # one short write per batch
            for params_ in updates:
                cur.execute(update, params_)
                if cur.rowcount:
                    outcome.resealed += 1
                else:
                    outcome.skipped += 1
        progress(len(rows))


# the key ledger (sealing_keys) ----------------------------------------------------------------
def check_keys(conn, sealer: Sealer) -> None:
    """At a process's start: record its current key id, and refuse (MissingKey) if a key id that may
    still seal data is not one of its keys. A cheap guard, not a scan: `envoi encryption status`
    counts the values themselves. conn: autocommit."""
    try:
        conn.execute("INSERT INTO sealing_keys (key_id) VALUES (%s)"
                     " ON CONFLICT (key_id) DO UPDATE SET retired_at = NULL", (sealer.current_id,))
    except psycopg.errors.UndefinedTable:
        raise SettingsError("the database is not migrated (no sealing_keys table): run `envoi migrate`") from None
    live = [r["key_id"] for r in conn.execute(
        "SELECT key_id FROM sealing_keys WHERE retired_at IS NULL ORDER BY first_used_at").fetchall()]
    missing = [kid for kid in live if kid not in sealer.key_ids]
    if missing:
        raise MissingKey(f"data may be sealed under key id(s) {', '.join(missing)}, which this process was not "
                         "given: add them to ENVOI_PREVIOUS_SECRET_KEYS (see `envoi encryption status`)")


def retire_others(db: Database, sealer: Sealer) -> list[str]:
    """Mark every key id but the current one retired (call only once nothing is sealed under them)."""
    with db.transaction() as conn:
        rows = conn.execute("UPDATE sealing_keys SET retired_at = now() WHERE key_id <> %s AND retired_at IS NULL"
                            " RETURNING key_id", (sealer.current_id,)).fetchall()
    return [r["key_id"] for r in rows]
