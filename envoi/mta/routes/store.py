"""SQL for routes, received messages and their outbox of HTTP posts (migration 0140)."""

from __future__ import annotations

from envoi.infra.db import Connection, Jsonb

ROUTE_COLUMNS = "id, priority, description, expression, actions, created_at"


def insert_route(conn: Connection, route_id: str, account_id: int, priority: int, description: str,
                 expression: str, actions: list[str]) -> dict:
    return conn.execute(
        f"INSERT INTO routes (id, account_id, priority, description, expression, actions)"
        f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {ROUTE_COLUMNS}",
        (route_id, account_id, priority, description, expression, Jsonb(actions))).fetchone()


def get_route(conn: Connection, account_id: int, route_id: str) -> dict | None:
    return conn.execute(f"SELECT {ROUTE_COLUMNS} FROM routes WHERE account_id = %s AND id = %s",
                        (account_id, route_id)).fetchone()


def list_routes(conn: Connection, account_id: int, skip: int, limit: int) -> tuple[int, list[dict]]:
    total = conn.execute("SELECT count(*) AS n FROM routes WHERE account_id = %s", (account_id,)).fetchone()["n"]
    rows = conn.execute(f"SELECT {ROUTE_COLUMNS} FROM routes WHERE account_id = %s"
                        " ORDER BY priority, created_at, id OFFSET %s LIMIT %s", (account_id, skip, limit)).fetchall()
    return total, rows


def all_routes(conn: Connection, account_id: int) -> list[dict]:
    return conn.execute(f"SELECT {ROUTE_COLUMNS} FROM routes WHERE account_id = %s"
                        " ORDER BY priority, created_at, id", (account_id,)).fetchall()


def update_route(conn: Connection, account_id: int, route_id: str, changes: dict) -> dict | None:
    sets = ", ".join(f"{column} = %s" for column in changes)
    values = [Jsonb(v) if column == "actions" else v for column, v in changes.items()]
    return conn.execute(f"UPDATE routes SET {sets} WHERE account_id = %s AND id = %s RETURNING {ROUTE_COLUMNS}",
                        (*values, account_id, route_id)).fetchone()


def delete_route(conn: Connection, account_id: int, route_id: str) -> bool:
    return conn.execute("DELETE FROM routes WHERE account_id = %s AND id = %s",
                        (account_id, route_id)).rowcount > 0


def receiving_domain(conn: Connection, name: str) -> dict | None:
    return conn.execute("SELECT d.id, d.account_id, d.name, d.state, a.state AS account_state, a.plan"
                        " FROM domains d JOIN accounts a ON a.id = d.account_id WHERE d.name = %s",
                        (name,)).fetchone()


def insert_message(conn: Connection, account_id: int, domain_id: int, storage_key: str, recipient: str,
                   sender: str, stored: bool, raw: bytes, keep_seconds: float) -> int:
    return conn.execute(
        "INSERT INTO inbound_messages (account_id, domain_id, storage_key, recipient, sender, stored, raw,"
        " expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s)) RETURNING id",
        (account_id, domain_id, storage_key, recipient, sender, stored, raw, keep_seconds)).fetchone()["id"]


def insert_posts(conn: Connection, account_id: int, message_id: int, posts: list[tuple[str, str]]) -> None:
    if posts:
        conn.cursor().executemany(
            "INSERT INTO inbound_posts (account_id, message_id, kind, target) VALUES (%s, %s, %s, %s)",
            [(account_id, message_id, kind, target) for kind, target in posts])


def stored_message(conn: Connection, domain_id: int, storage_key: str) -> dict | None:
    return conn.execute("SELECT m.*, d.name AS domain FROM inbound_messages m JOIN domains d ON d.id = m.domain_id"
                        " WHERE m.domain_id = %s AND m.storage_key = %s AND m.stored AND m.raw IS NOT NULL",
                        (domain_id, storage_key)).fetchone()


def claim_posts(conn: Connection, limit: int, lease_seconds: float, only: list[int] | None = None) -> list[dict]:
    """Due pending posts, leased (next_attempt_at pushed past the lease) so no other poster takes them."""
    scope = "AND p.message_id = ANY(%s)" if only is not None else ""
    args = (only,) if only is not None else ()
    return conn.execute(
        f"""UPDATE inbound_posts p SET next_attempt_at = now() + make_interval(secs => %s)
            FROM (SELECT id FROM inbound_posts p WHERE status = 'pending' AND next_attempt_at <= now() {scope}
                  ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED) due, inbound_messages m, domains d
            WHERE p.id = due.id AND m.id = p.message_id AND d.id = m.domain_id
            RETURNING p.id, p.account_id, p.kind, p.target, p.attempts, p.created_at, m.storage_key, m.recipient,
                      m.sender, m.raw, m.domain_id, d.name AS domain""",
        (lease_seconds, *args, limit)).fetchall()


def finish_post(conn: Connection, post_id: int, *, status: str, attempts: int, last_status: int | None,
                error: str | None, next_in: float | None) -> None:
    conn.execute("UPDATE inbound_posts SET status = %s, attempts = %s, last_status = %s, last_error = %s,"
                 " next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s",
                 (status, attempts, last_status, error, next_in or 0, post_id))


def purge_expired(conn: Connection, batch: int) -> int:
    """Expired messages lose their body; rows with nothing left to post go."""
    n = conn.execute("UPDATE inbound_messages SET raw = NULL WHERE id IN (SELECT id FROM inbound_messages"
                     " WHERE raw IS NOT NULL AND expires_at <= now() LIMIT %s)", (batch,)).rowcount
    conn.execute("DELETE FROM inbound_messages m WHERE raw IS NULL AND NOT EXISTS"
                 " (SELECT 1 FROM inbound_posts p WHERE p.message_id = m.id AND p.status = 'pending')")
    return n


def inbound_about(conn: Connection, account_id: int, address: str) -> list[dict]:
    return conn.execute("SELECT storage_key, recipient, sender, stored, received_at, expires_at FROM inbound_messages"
                        " WHERE account_id = %s AND (lower(recipient) = %s OR lower(sender) = %s) ORDER BY id",
                        (account_id, address, address)).fetchall()


def erase_address(conn: Connection, account_id: int, address: str) -> int:
    return conn.execute("DELETE FROM inbound_messages WHERE account_id = %s AND (lower(recipient) = %s"
                        " OR lower(sender) = %s)", (account_id, address, address)).rowcount
