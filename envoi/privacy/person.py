"""One person's traces beyond the rows that are about them alone: messages they shared with other
recipients (the To/Cc header kept for events), the events and webhook payloads of those other
recipients (which carry the same headers), webhook attempts whose answer quoted them, and the sandbox's
authorised recipients. Erasure scrubs the address out of these (it becomes ERASED) and keeps the rest,
which belongs to the other recipients.

Rows are found with a case-insensitive match on their JSON text and rewritten in Python, so an address
inside a display name ("Ann <ann@x.test>") or any other string goes too.
"""

from __future__ import annotations

import json
import re

from envoi.infra.db import Connection, Jsonb

ERASED = "[erased]"


def _like(address: str) -> str:
    # As the address appears inside JSON text, as a LIKE pattern matching it literally.
    text = json.dumps(address)[1:-1]
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def scrubbed(value, address: str):
    """`value` (JSON-shaped) with every occurrence of the address, in any case, replaced by ERASED."""
    pattern = re.compile(re.escape(address), re.IGNORECASE)

    def walk(v):
        if isinstance(v, str):
            return pattern.sub(ERASED, v)
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        return v
    return walk(value)


def _rewrite(conn: Connection, table: str, column: str, account_id: int, address: str,
             key: str = "id") -> int:
    rows = conn.execute(f"SELECT {key} AS k, {column} AS v FROM {table}"
                        f" WHERE account_id = %s AND {column}::text ILIKE %s",
                        (account_id, _like(address))).fetchall()
    with conn.cursor() as cur:
        cur.executemany(f"UPDATE {table} SET {column} = %s WHERE account_id = %s AND {key} = %s",
                        [(Jsonb(scrubbed(r["v"], address)), account_id, r["k"]) for r in rows])
    return len(rows)


def _rewrite_parents_copies(conn: Connection, account_id: int, address: str) -> int:
    """A parent's outbox rows of this subaccount's events (its account-level webhooks) are the parent's
    but under this account's domains: they hold the address too."""
    rows = conn.execute(
        "SELECT id, payload FROM webhook_deliveries WHERE domain_id IN (SELECT id FROM domains WHERE account_id = %s)"
        " AND account_id <> %s AND payload::text ILIKE %s", (account_id, account_id, _like(address))).fetchall()
    with conn.cursor() as cur:
        cur.executemany("UPDATE webhook_deliveries SET payload = %s WHERE id = %s",
                        [(Jsonb(scrubbed(r["payload"], address)), r["id"]) for r in rows])
    return len(rows)


def scrub(conn: Connection, account_id: int, address: str) -> dict:
    """After the rows about the address alone are gone: scrub it from what others' rows still hold."""
    done = {
        "shared_message_headers": _rewrite(conn, "messages", "headers", account_id, address),
        "other_events": _rewrite(conn, "events", "data", account_id, address),
        "other_webhook_payloads": _rewrite(conn, "webhook_deliveries", "payload", account_id, address)
        + _rewrite_parents_copies(conn, account_id, address),
    }
    done["webhook_attempt_answers"] = conn.execute(
        "UPDATE webhook_attempts a SET response = regexp_replace(a.response, %s, %s, 'gi'),"
        " error = regexp_replace(a.error, %s, %s, 'gi') FROM webhook_deliveries d"
        " WHERE d.id = a.delivery_id AND (d.account_id = %s OR d.domain_id IN (SELECT id FROM domains"
        " WHERE account_id = %s)) AND (a.response ILIKE %s OR a.error ILIKE %s)",
        (_regex(address), ERASED, _regex(address), ERASED, account_id, account_id, _like(address),
         _like(address))).rowcount
    done["authorized_recipients"] = conn.execute(
        "DELETE FROM authorized_recipients WHERE account_id = %s AND lower(address) = %s",
        (account_id, address)).rowcount
    return done


def _regex(address: str) -> str:
    return re.sub(r"([\\.^$|?*+()\[\]{}-])", r"\\\1", address)


def webhook_deliveries(conn: Connection, account_id: int, address: str) -> list[dict]:
    """Webhook deliveries whose payload mentions the address, with their attempts (an export)."""
    rows = conn.execute(
        "SELECT id, event_type, url, event_id, payload, status, attempts, created_at, finished_at"
        " FROM webhook_deliveries WHERE account_id = %s AND payload::text ILIKE %s ORDER BY id",
        (account_id, _like(address))).fetchall()
    attempts: dict[int, list] = {}
    for a in conn.execute("SELECT delivery_id, attempt_no, status_code, error, latency_ms, response, outcome,"
                          " attempted_at FROM webhook_attempts WHERE delivery_id = ANY(%s) ORDER BY id",
                          ([r["id"] for r in rows],)):
        attempts.setdefault(a.pop("delivery_id"), []).append(a)
    return [dict(r, attempts=attempts.get(r["id"], [])) for r in rows]


def sealed_bodies(conn: Connection, account_id: int, address: str) -> list[dict]:
    """The stored (sealed) bodies of the messages sent to the address, still within retention."""
    return conn.execute(
        "SELECT DISTINCT m.message_id, m.storage_key, m.body FROM recipients r JOIN messages m ON m.id = r.message_pk"
        " WHERE r.account_id = %s AND lower(r.address) = %s AND m.body IS NOT NULL",
        (account_id, address)).fetchall()


def authorized_recipient(conn: Connection, account_id: int, address: str) -> list[dict]:
    return conn.execute("SELECT address, created_at FROM authorized_recipients WHERE account_id = %s"
                        " AND lower(address) = %s", (account_id, address)).fetchall()
