"""SQL for DKIM keys (the dkim_keys table) and the DKIM columns of domains (envoi.accounts.dkim)."""

from __future__ import annotations

from envoi.infra.db import Connection

KEY_COLUMNS = ("k.id, k.domain_id, k.signing_domain, k.selector, k.algorithm, k.bits, k.private_key, k.public_key,"
               " k.state, k.retiring_since, k.created_at")


def keys_of(conn: Connection, domain_ids: list[int]) -> list[dict]:
    return conn.execute(f"SELECT {KEY_COLUMNS} FROM dkim_keys k WHERE k.domain_id = ANY(%s) ORDER BY k.id",
                        (domain_ids,)).fetchall()


def get_key(conn: Connection, domain_id: int, selector: str, *, lock: bool = False) -> dict | None:
    return conn.execute(f"SELECT {KEY_COLUMNS} FROM dkim_keys k WHERE k.domain_id = %s AND k.selector = %s"
                        + (" FOR UPDATE" if lock else ""), (domain_id, selector)).fetchone()


def count_inactive(conn: Connection, domain_id: int) -> int:
    return conn.execute("SELECT count(*) AS n FROM dkim_keys WHERE domain_id = %s AND state = 'inactive'",
                        (domain_id,)).fetchone()["n"]


def insert_key(conn: Connection, domain: dict, selector: str, algorithm: str, bits: int | None, sealed: bytes,
               public: str) -> None:
    conn.execute("INSERT INTO dkim_keys (domain_id, signing_domain, selector, algorithm, bits, private_key,"
                 " public_key, state) VALUES (%s, %s, %s, %s, %s, %s, %s, 'inactive')",
                 (domain["id"], domain["name"], selector, algorithm, bits, sealed, public))


def delete_key(conn: Connection, key_id: int) -> None:
    conn.execute("DELETE FROM dkim_keys WHERE id = %s", (key_id,))


def lock_domain(conn: Connection, domain_id: int) -> dict:
    """The domain's DKIM columns, locked: key changes of one domain happen one at a time."""
    return conn.execute(
        "SELECT id, name, dkim_selector, dkim_public_key, dkim_private_key, dkim_key_size, dkim_pending_selector,"
        " dkim_ed25519_selector, dkim_ed25519_key, dkim_ed25519_public_key FROM domains WHERE id = %s FOR UPDATE",
        (domain_id,)).fetchone()


def set_rsa(conn: Connection, domain_id: int, selector: str, sealed: bytes, public: str, bits: int) -> None:
    conn.execute("UPDATE domains SET dkim_selector = %s, dkim_private_key = %s, dkim_public_key = %s,"
                 " dkim_key_size = %s, dkim_rotated_at = now() WHERE id = %s",
                 (selector, sealed, public, bits, domain_id))


def retire_ed25519(conn: Connection, domain_id: int) -> None:
    """The domain's ed25519 key is about to be replaced: keep its public half as a retiring key."""
    conn.execute(
        "INSERT INTO dkim_keys (domain_id, signing_domain, selector, algorithm, public_key, state, retiring_since)"
        " SELECT id, name, dkim_ed25519_selector, 'ed25519', dkim_ed25519_public_key, 'retiring', now()"
        " FROM domains WHERE id = %s AND dkim_ed25519_key IS NOT NULL ON CONFLICT (domain_id, selector)"
        " DO UPDATE SET state = 'retiring', private_key = NULL, public_key = EXCLUDED.public_key,"
        " retiring_since = now()", (domain_id,))


def set_ed25519(conn: Connection, domain_id: int, selector: str | None, sealed: bytes | None,
                public: str | None) -> None:
    conn.execute("UPDATE domains SET dkim_ed25519_selector = %s, dkim_ed25519_key = %s,"
                 " dkim_ed25519_public_key = %s WHERE id = %s", (selector, sealed, public, domain_id))


def set_selector(conn: Connection, domain_id: int, selector: str) -> None:
    conn.execute("UPDATE domains SET dkim_selector = %s WHERE id = %s", (selector, domain_id))


def clear_pending(conn: Connection, domain_id: int) -> None:
    conn.execute("UPDATE domains SET dkim_pending_selector = NULL, dkim_pending_private_key = NULL,"
                 " dkim_pending_public_key = NULL, dkim_pending_key_size = NULL WHERE id = %s", (domain_id,))


def set_rotation(conn: Connection, domain_id: int, enabled: bool, interval_seconds: int | None) -> None:
    conn.execute("UPDATE domains SET dkim_rotation_enabled = %s,"
                 " dkim_rotation_interval = make_interval(secs => %s) WHERE id = %s",
                 (enabled, interval_seconds, domain_id))


def set_authority(conn: Connection, domain_id: int, authority_id: int | None) -> None:
    conn.execute("UPDATE domains SET dkim_authority_id = %s WHERE id = %s", (authority_id, domain_id))


def signs_for_others(conn: Connection, domain_id: int) -> bool:
    return conn.execute("SELECT 1 FROM domains WHERE dkim_authority_id = %s LIMIT 1", (domain_id,)).fetchone() is not None


# the rotation job (envoi.mta.dkim_rotation) ---------------------------------------------------------
def due_for_rotation(conn: Connection, default_interval: float) -> list[dict]:
    """Active domains with rotation on whose key is older than their interval, and no rotation waiting."""
    return conn.execute(
        "SELECT id, account_id, name FROM domains WHERE dkim_rotation_enabled AND state = 'active'"
        " AND dkim_authority_id IS NULL"  # signs with its authority's keys: that domain's rotation applies
        " AND dkim_pending_selector IS NULL AND coalesce(dkim_rotated_at, created_at)"
        " + coalesce(dkim_rotation_interval, make_interval(secs => %s)) <= now() ORDER BY id",
        (default_interval,)).fetchall()


def with_pending(conn: Connection) -> list[dict]:
    """Domains whose next key waits for its record to be found in DNS."""
    return conn.execute("SELECT id, account_id, name FROM domains WHERE dkim_pending_selector IS NOT NULL"
                        " ORDER BY id").fetchall()


def retiring(conn: Connection, older_than: float) -> list[dict]:
    """Retiring keys replaced at least `older_than` seconds ago, with the domains that sign with them (the
    signing domain and those that have it as their DKIM authority)."""
    return conn.execute(
        "SELECT k.id, k.domain_id, k.signing_domain, k.selector, array_append(array(SELECT s.id FROM domains s"
        " WHERE s.dkim_authority_id = k.domain_id), k.domain_id) AS domain_ids FROM dkim_keys k"
        " WHERE k.state = 'retiring' AND k.retiring_since <= now() - make_interval(secs => %s) ORDER BY k.id",
        (older_than,)).fetchall()
