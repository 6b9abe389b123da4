"""SQL for inbound bounce and complaint processing."""

from __future__ import annotations

from envoi.infra.db import Connection

_MESSAGE_COLUMNS = ("id, account_id, domain_id, message_id, mail_from, headers, tags, user_variables, options,"
                    " attachments, size")


def message_by_pk(conn: Connection, message_pk: int) -> dict | None:
    return conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = %s", (message_pk,)).fetchone()


def message_by_message_id(conn: Connection, domain_ids: list[int], message_id: str) -> dict | None:
    """The newest message with this Message-ID among the given domains (the tenant scope)."""
    if not domain_ids or not message_id:
        return None
    return conn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE domain_id = ANY(%s) AND message_id = %s"
        " ORDER BY created_at DESC, id DESC LIMIT 1",  # ids come in per-process blocks: not in time order
        (domain_ids, message_id),
    ).fetchone()


def recipients_of(conn: Connection, message_pk: int, limit: int = 1000) -> list[dict]:
    return conn.execute(
        "SELECT id, message_pk, address, status, attempts FROM recipients WHERE message_pk = %s ORDER BY id LIMIT %s",
        (message_pk, limit),
    ).fetchall()


def domains_named(conn: Connection, names: list[str]) -> list[dict]:
    return conn.execute("SELECT id, account_id, name FROM domains WHERE name = ANY(%s)", (names,)).fetchall()


def claim_report(conn: Connection, recipient_id: int, kind: str) -> bool:
    """True the first time (recipient, kind) is reported; False for a repeat."""
    row = conn.execute(
        "INSERT INTO bounce_reports (recipient_id, kind) VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING 1",
        (recipient_id, kind),
    ).fetchone()
    return row is not None
