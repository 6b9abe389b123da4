"""SQL for accounts, domains, API keys and SMTP credentials."""

from __future__ import annotations

from envoi.infra.db import Connection, Jsonb, like_escape

DOMAIN_COLUMNS = (
    "d.id, d.account_id, d.name, d.state, d.type, d.dkim_selector, d.dkim_private_key, d.dkim_public_key,"
    " d.dkim_key_size, d.spam_action, d.wildcard, d.web_prefix, d.web_scheme, d.require_tls,"
    " d.skip_verification, d.ip_overflow, extract(epoch from d.message_ttl) AS message_ttl, d.created_at,"
    " d.dkim_pending_selector, d.dkim_pending_private_key, d.dkim_pending_public_key, d.dkim_pending_key_size,"
    " d.dkim_rotated_at, d.dkim_ed25519_selector, d.dkim_ed25519_public_key, d.dkim_authority_id,"
    " d.dkim_rotation_enabled, extract(epoch from d.dkim_rotation_interval) AS dkim_rotation_interval,"
    # DKIM authority (envoi.accounts.dkim): the parent domain this one signs as, and the keys retired from
    # signing whose records must stay published while mail signed with them is queued.
    " (SELECT json_build_object('name', a.name, 'selector', a.dkim_selector, 'public_key', a.dkim_public_key,"
    "  'ed25519_selector', a.dkim_ed25519_selector, 'ed25519_public_key', a.dkim_ed25519_public_key)"
    "  FROM domains a WHERE a.id = d.dkim_authority_id) AS dkim_authority,"
    " (SELECT coalesce(json_agg(json_build_object('signing_domain', k.signing_domain, 'selector', k.selector,"
    "  'algorithm', k.algorithm, 'public_key', k.public_key) ORDER BY k.id), '[]'::json) FROM dkim_keys k"
    "  WHERE k.domain_id = coalesce(d.dkim_authority_id, d.id) AND k.state = 'retiring') AS dkim_retiring"
)


def insert_account(conn: Connection, name: str, region: str, plan: str) -> dict:
    return conn.execute(
        "INSERT INTO accounts (name, region, plan) VALUES (%s, %s, %s) RETURNING *", (name, region, plan)
    ).fetchone()


def get_account(conn: Connection, account_id: int) -> dict | None:
    return conn.execute("SELECT * FROM accounts WHERE id = %s", (account_id,)).fetchone()


def _account_filter(state: str | None, search: str | None) -> tuple[str, tuple]:
    """WHERE for accounts in `state` whose name starts with `search` (any case) or whose id it is."""
    where, args = [], []
    if state:
        where.append("a.state = %s")
        args.append(state)
    if search:
        where.append("(a.name ILIKE %s OR a.id::text = %s)")
        args += [like_escape(search) + "%", search]
    return ("WHERE " + " AND ".join(where)) if where else "", tuple(args)


def list_accounts(conn: Connection, state: str | None = None, limit: int | None = None, skip: int = 0, *,
                  search: str | None = None, newest_first: bool = False) -> list[dict]:
    """Every account (or those in `state`, or matching `search`) with what an operator's page shows beside
    it: its domains, its dashboard users and the recipients it had accepted in the last 30 days (from the
    stats rollup and its few seconds of counts not yet folded, as the stats API reads them: a few hundred
    rows per domain at most, never the messages table)."""
    where, args = _account_filter(state, search)
    order = "DESC" if newest_first else "ASC"
    return conn.execute(
        "SELECT a.*,"
        " (SELECT count(*) FROM domains d WHERE d.account_id = a.id) AS domains,"
        " (SELECT count(*) FROM users u WHERE u.account_id = a.id) AS users,"
        " ((SELECT coalesce(sum(s.count), 0) FROM event_stats_hourly s JOIN domains d ON d.id = s.domain_id"
        "   WHERE d.account_id = a.id AND s.tag = '' AND s.event = 'accepted'"
        "   AND s.hour >= now() - interval '30 days')"
        "  + (SELECT coalesce(sum(p.count), 0) FROM event_stats_pending p"
        "   WHERE p.account_id = a.id AND p.tag = '' AND p.event = 'accepted'))::bigint AS accepted_30d"
        f" FROM accounts a {where} ORDER BY a.id {order} LIMIT %s OFFSET %s", (*args, limit, skip)).fetchall()


def count_accounts(conn: Connection, state: str | None = None, *, search: str | None = None) -> int:
    where, args = _account_filter(state, search)
    return conn.execute(f"SELECT count(*) AS n FROM accounts a {where}", args).fetchone()["n"]


def set_account_state(conn: Connection, account_id: int, state: str, reason: str) -> dict | None:
    """Move the account to `state`; returns the row as it was before (None: no such account). A closed
    account stays closed."""
    before = conn.execute("SELECT * FROM accounts WHERE id = %s FOR UPDATE", (account_id,)).fetchone()
    if before is None or before["state"] == "closed":
        return before
    conn.execute(
        "UPDATE accounts SET state = %s, state_reason = %s, state_changed_at = now(),"
        " closed_at = CASE WHEN %s = 'closed' THEN now() END WHERE id = %s",
        (state, reason, state, account_id))
    return before


def end_account_sessions(conn: Connection, account_id: int) -> int:
    """Sign every user of the account out (it was closed)."""
    return conn.execute("DELETE FROM user_sessions s USING users u WHERE u.id = s.user_id AND u.account_id = %s",
                        (account_id,)).rowcount


#: The account's state as sending sees it: an active subaccount its parent disabled reads 'disabled'.
SENDING_STATE = "CASE WHEN a.state = 'active' AND a.disabled_at IS NOT NULL THEN 'disabled' ELSE a.state END"


def account_state(conn: Connection, account_id: int) -> dict | None:
    return conn.execute(f"SELECT {SENDING_STATE} AS state, a.state_reason, a.plan, a.monthly_limit FROM accounts a"
                        " WHERE a.id = %s", (account_id,)).fetchone()


def set_account_plan(conn: Connection, account_id: int, plan: str) -> dict | None:
    """The account's plan before the change (None: no such account)."""
    return conn.execute(
        "UPDATE accounts a SET plan = %s FROM (SELECT id, plan FROM accounts WHERE id = %s FOR UPDATE) b"
        " WHERE a.id = b.id RETURNING b.plan", (plan, account_id)).fetchone()


def insert_domain(conn: Connection, **row) -> dict:
    cols = ", ".join(row)
    marks = ", ".join(["%s"] * len(row))
    conn.execute(f"INSERT INTO domains ({cols}) VALUES ({marks})", tuple(row.values()))
    return get_domain(conn, row["name"], row["account_id"])


def get_domain(conn: Connection, name: str, account_id: int | None = None) -> dict | None:
    """An account's domain; without an account (operator tools), the name's active row if any, else
    its newest (several accounts may hold a name unverified)."""
    sql = f"SELECT {DOMAIN_COLUMNS} FROM domains d WHERE d.name = %s"
    args: tuple = (name.lower(),)
    if account_id is not None:
        sql += " AND d.account_id = %s"
        args += (account_id,)
    return conn.execute(sql + " ORDER BY d.state = 'active' DESC, d.id DESC LIMIT 1", args).fetchone()


def active_elsewhere(conn: Connection, name: str, account_id: int) -> bool:
    """Another account holds this name verified."""
    return conn.execute(
        "SELECT 1 FROM domains WHERE name = %s AND state = 'active' AND account_id <> %s", (name, account_id)
    ).fetchone() is not None


def activate_domain(conn: Connection, domain_id: int) -> list[int]:
    """Mark a domain verified and release the same name held unverified by other accounts (their rows
    are disabled and their SMTP logins, which would block the owner's, deleted). Returns the released
    ids. The unique index on active names refuses a second active row (IntegrityError)."""
    released = [r["id"] for r in conn.execute(
        "UPDATE domains o SET state = 'disabled' FROM domains d"
        " WHERE d.id = %s AND o.name = d.name AND o.account_id <> d.account_id AND o.state = 'unverified'"
        " RETURNING o.id",
        (domain_id,),
    ).fetchall()]
    if released:
        conn.execute("DELETE FROM smtp_credentials WHERE domain_id = ANY(%s)", (released,))
    conn.execute("UPDATE domains SET state = 'active' WHERE id = %s", (domain_id,))
    return released


def authorized_recipients(conn: Connection, account_id: int) -> list[dict]:
    return conn.execute(
        "SELECT address, created_at FROM authorized_recipients WHERE account_id = %s ORDER BY created_at, address",
        (account_id,),
    ).fetchall()


def add_authorized_recipient(conn: Connection, account_id: int, address: str, limit: int) -> bool:
    """Add (idempotent) unless the account already has `limit` others; False when full."""
    conn.execute("SELECT id FROM accounts WHERE id = %s FOR UPDATE", (account_id,))  # serialise the count
    row = conn.execute(
        "INSERT INTO authorized_recipients (account_id, address)"
        " SELECT %s, %s WHERE (SELECT count(*) FROM authorized_recipients WHERE account_id = %s) < %s"
        " ON CONFLICT DO NOTHING RETURNING 1",
        (account_id, address, account_id, limit),
    ).fetchone()
    if row is not None:
        return True
    return conn.execute(
        "SELECT 1 FROM authorized_recipients WHERE account_id = %s AND address = %s", (account_id, address)
    ).fetchone() is not None


def delete_authorized_recipient(conn: Connection, account_id: int, address: str) -> bool:
    cur = conn.execute(
        "DELETE FROM authorized_recipients WHERE account_id = %s AND address = %s", (account_id, address)
    )
    return cur.rowcount > 0


def get_domain_by_id(conn: Connection, domain_id: int) -> dict | None:
    return conn.execute(f"SELECT {DOMAIN_COLUMNS} FROM domains d WHERE d.id = %s", (domain_id,)).fetchone()


#: Mailgun's `sort` values for GET /v4/domains; without one, newest first.
DOMAIN_ORDERS = {None: "d.created_at DESC, d.id DESC", "name": "d.name, d.id", "name:asc": "d.name, d.id",
                 "name:desc": "d.name DESC, d.id DESC"}


def list_domains(conn: Connection, account_id: int, state: str | None, limit: int, skip: int,
                 search: str | None = None, sort: str | None = None,
                 include_subaccounts: bool = False) -> tuple[int, list]:
    if include_subaccounts:  # the account's and its subaccounts' (accounts_parent index)
        where, args = ["d.account_id IN (SELECT %s UNION ALL SELECT id FROM accounts WHERE parent_id = %s)"], [
            account_id, account_id]
    else:
        where, args = ["d.account_id = %s"], [account_id]
    if state:
        where.append("d.state = %s")
        args.append(state)
    if search:  # a part of the name, taken literally (Mailgun: "does not support wildcards")
        where.append("d.name LIKE %s")
        args.append(f"%{like_escape(search.lower())}%")
    cond = " AND ".join(where)
    total = conn.execute(f"SELECT count(*) AS n FROM domains d WHERE {cond}", args).fetchone()["n"]
    rows = conn.execute(
        f"SELECT {DOMAIN_COLUMNS} FROM domains d WHERE {cond} ORDER BY {DOMAIN_ORDERS[sort]} LIMIT %s OFFSET %s",
        (*args, limit, skip),
    ).fetchall()
    return total, rows


def update_domain(conn: Connection, domain_id: int, changes: dict) -> None:
    """Set some of a domain's settings (the caller names only columns it has checked)."""
    if changes:
        cols = ", ".join(f"{name} = %s" for name in changes)
        conn.execute(f"UPDATE domains SET {cols} WHERE id = %s", (*changes.values(), domain_id))


def dns_state(conn: Connection, domain_id: int) -> dict | None:
    """The last DNS check's findings, and whether the domain receives mail: its account has inbound
    routes (Mailgun's routes take any of the account's domains) or a mailing list lives at it."""
    return conn.execute(
        "SELECT d.dns_checks, d.dns_checked_at,"
        " (EXISTS (SELECT 1 FROM routes r WHERE r.account_id = d.account_id)"
        "  OR EXISTS (SELECT 1 FROM mailing_lists l WHERE l.domain_id = d.id)) AS receiving"
        " FROM domains d WHERE d.id = %s", (domain_id,)).fetchone()


def save_dns_checks(conn: Connection, domain_id: int, checks: dict) -> None:
    conn.execute("UPDATE domains SET dns_checks = %s, dns_checked_at = now() WHERE id = %s",
                 (Jsonb(checks), domain_id))


def claim_dns_rechecks(conn: Connection, older_than: float, limit: int) -> list[dict]:
    """Up to `limit` domains not checked for `older_than` seconds (never checked: counted from their
    creation), longest first, marked checked now so that a second scheduler takes others."""
    return conn.execute(
        "UPDATE domains d SET dns_checked_at = now() FROM ("
        " SELECT id FROM domains WHERE state <> 'disabled'"
        "  AND coalesce(dns_checked_at, created_at) < now() - make_interval(secs => %s)"
        "  ORDER BY coalesce(dns_checked_at, created_at) LIMIT %s FOR UPDATE SKIP LOCKED) due"
        f" WHERE d.id = due.id RETURNING {DOMAIN_COLUMNS}", (older_than, limit)).fetchall()


def set_pending_dkim(conn: Connection, domain_id: int, selector: str, sealed: bytes, public: str,
                     key_size: int) -> None:
    conn.execute("UPDATE domains SET dkim_pending_selector = %s, dkim_pending_private_key = %s,"
                 " dkim_pending_public_key = %s, dkim_pending_key_size = %s WHERE id = %s",
                 (selector, sealed, public, key_size, domain_id))


def promote_pending_dkim(conn: Connection, domain_id: int, selector: str) -> bool:
    """The pending key (if it is still the one with SELECTOR) becomes the signing key, in one update; the
    key it replaces is kept retiring (its record stays published while mail it signed is queued)."""
    if conn.execute("SELECT 1 FROM domains WHERE id = %s AND dkim_pending_selector = %s FOR UPDATE",
                    (domain_id, selector)).fetchone() is None:
        return False
    retire_rsa(conn, domain_id)
    return conn.execute(
        "UPDATE domains SET dkim_selector = dkim_pending_selector, dkim_private_key = dkim_pending_private_key,"
        " dkim_public_key = dkim_pending_public_key, dkim_key_size = dkim_pending_key_size,"
        " dkim_pending_selector = NULL, dkim_pending_private_key = NULL, dkim_pending_public_key = NULL,"
        " dkim_pending_key_size = NULL, dkim_rotated_at = now() WHERE id = %s AND dkim_pending_selector = %s",
        (domain_id, selector)).rowcount > 0


def retire_rsa(conn: Connection, domain_id: int) -> None:
    """The domain's signing RSA key is about to be replaced: keep its public half as a retiring key."""
    conn.execute(
        "INSERT INTO dkim_keys (domain_id, signing_domain, selector, algorithm, bits, public_key, state,"
        " retiring_since) SELECT id, name, dkim_selector, 'rsa', dkim_key_size, dkim_public_key, 'retiring', now()"
        " FROM domains WHERE id = %s ON CONFLICT (domain_id, selector) DO UPDATE SET state = 'retiring',"
        " private_key = NULL, public_key = EXCLUDED.public_key, retiring_since = now()", (domain_id,))


def set_domain_state(conn: Connection, domain_id: int, state: str) -> None:
    conn.execute("UPDATE domains SET state = %s WHERE id = %s", (state, domain_id))


def unverify_domain(conn: Connection, domain_id: int) -> bool:
    """Active -> unverified (its records broke); False when it was no longer active."""
    return conn.execute("UPDATE domains SET state = 'unverified' WHERE id = %s AND state = 'active'",
                        (domain_id,)).rowcount > 0


def delete_domain(conn: Connection, domain_id: int) -> None:
    conn.execute("DELETE FROM domains WHERE id = %s", (domain_id,))


def insert_api_key(conn: Connection, **row) -> dict:
    cols = ", ".join(row)
    marks = ", ".join(["%s"] * len(row))
    return conn.execute(
        f"INSERT INTO api_keys ({cols}) VALUES ({marks}) RETURNING *", tuple(row.values())
    ).fetchone()


def find_api_key(conn: Connection, secret_hash: bytes) -> dict | None:
    return conn.execute(
        f"SELECT k.*, d.name AS domain_name, coalesce({SENDING_STATE}, 'active') AS account_state,"
        " a.plan AS account_plan, a.monthly_limit AS account_monthly_limit FROM api_keys k LEFT JOIN domains d ON d.id = k.domain_id LEFT JOIN accounts a ON a.id = k.account_id"
        " WHERE k.secret_hash = %s AND NOT k.is_disabled AND (k.expires_at IS NULL OR k.expires_at > now())"
        " AND a.state IS DISTINCT FROM 'closed'",
        (secret_hash,),
    ).fetchone()


def list_api_keys(conn: Connection, account_id: int) -> list[dict]:
    return conn.execute(
        "SELECT k.*, d.name AS domain_name FROM api_keys k LEFT JOIN domains d ON d.id = k.domain_id"
        " WHERE k.account_id IS NOT DISTINCT FROM %s ORDER BY k.created_at",
        (account_id,),
    ).fetchall()


def delete_api_key(conn: Connection, account_id: int | None, key_id: str) -> dict | None:
    """account_id None: whoever holds it (the operator revoking by id). The deleted row's account and
    role, or None when there was no such key."""
    return conn.execute("DELETE FROM api_keys WHERE id = %s AND (%s::bigint IS NULL OR account_id = %s)"
                        " RETURNING account_id, role", (key_id, account_id, account_id)).fetchone()


def insert_credential(conn: Connection, domain_id: int, login: str, password_hash: str) -> dict:
    return conn.execute(
        "INSERT INTO smtp_credentials (domain_id, login, password_hash) VALUES (%s, %s, %s) RETURNING *",
        (domain_id, login, password_hash),
    ).fetchone()


def find_credential(conn: Connection, login: str) -> dict | None:
    return conn.execute(
        f"SELECT c.*, d.name AS domain_name, d.account_id, {SENDING_STATE} AS account_state,"
        " a.plan AS account_plan, a.monthly_limit AS account_monthly_limit FROM smtp_credentials c"
        " JOIN domains d ON d.id = c.domain_id JOIN accounts a ON a.id = d.account_id"
        " WHERE c.login = %s AND a.state <> 'closed'",
        (login.lower(),),
    ).fetchone()


def list_credentials(conn: Connection, domain_id: int) -> list[dict]:
    return conn.execute(
        "SELECT * FROM smtp_credentials WHERE domain_id = %s ORDER BY created_at", (domain_id,)
    ).fetchall()


def update_credential_password(conn: Connection, domain_id: int, login: str, password_hash: str) -> bool:
    cur = conn.execute(
        "UPDATE smtp_credentials SET password_hash = %s WHERE domain_id = %s AND login = %s",
        (password_hash, domain_id, login.lower()),
    )
    return cur.rowcount > 0


def delete_credential(conn: Connection, domain_id: int, login: str) -> bool:
    cur = conn.execute(
        "DELETE FROM smtp_credentials WHERE domain_id = %s AND login = %s", (domain_id, login.lower())
    )
    return cur.rowcount > 0


# subaccounts --------------------------------------------------------------------------------------
def insert_subaccount(conn: Connection, parent_id: int, name: str) -> dict:
    """A subaccount in its parent's region and on its parent's plan."""
    return conn.execute(
        "INSERT INTO accounts (name, region, plan, parent_id) SELECT %s, region, plan, id FROM accounts"
        " WHERE id = %s RETURNING *", (name, parent_id)).fetchone()


def subaccount(conn: Connection, parent_id: int, sub_id: int) -> dict | None:
    """The parent's subaccount with this id (None: there is none, or it is another account's)."""
    return conn.execute(f"SELECT a.*, {SENDING_STATE} AS sending_state FROM accounts a"
                        " WHERE a.id = %s AND a.parent_id = %s", (sub_id, parent_id)).fetchone()


def list_subaccounts(conn: Connection, parent_id: int, *, name: str | None, enabled: bool | None,
                     closed: bool | None, descending: bool, limit: int, skip: int) -> tuple[int, list[dict]]:
    where, args = ["a.parent_id = %s"], [parent_id]
    if name:
        where.append("a.name ILIKE %s")
        args.append("%" + like_escape(name) + "%")
    if enabled is not None:
        where.append("a.disabled_at IS NULL" if enabled else "a.disabled_at IS NOT NULL")
    if closed is not None:
        where.append("a.state = 'closed'" if closed else "a.state <> 'closed'")
    sql = " AND ".join(where)
    total = conn.execute(f"SELECT count(*) AS n FROM accounts a WHERE {sql}", args).fetchone()["n"]
    rows = conn.execute(f"SELECT a.* FROM accounts a WHERE {sql} ORDER BY a.name {'DESC' if descending else 'ASC'},"
                        " a.id LIMIT %s OFFSET %s", [*args, limit, skip]).fetchall()
    return total, rows


def set_disabled(conn: Connection, parent_id: int, sub_id: int, disabled: bool) -> dict | None:
    return conn.execute(
        "UPDATE accounts SET disabled_at = CASE WHEN %s THEN coalesce(disabled_at, now()) END"
        " WHERE id = %s AND parent_id = %s RETURNING *", (disabled, sub_id, parent_id)).fetchone()


def set_monthly_limit(conn: Connection, account_id: int, limit: int | None) -> dict | None:
    return conn.execute("UPDATE accounts SET monthly_limit = %s WHERE id = %s RETURNING *",
                        (limit, account_id)).fetchone()
