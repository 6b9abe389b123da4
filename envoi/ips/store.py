"""SQL for the IP inventory, pools, domain assignments, warm-up quota and audit log."""

from __future__ import annotations

from envoi.infra.db import Connection, Jsonb

IP_COLUMNS = "i.address, i.host, i.helo, i.ptr, i.enabled, i.dedicated, i.account_id, i.assigned_at, i.created_at"


# inventory ------------------------------------------------------------------------------------
def insert_ip(conn: Connection, address: str, host: str, helo: str, ptr: str, dedicated: bool,
              enabled: bool) -> dict | None:
    return conn.execute(
        "INSERT INTO ips (address, host, helo, ptr, dedicated, enabled) VALUES (%s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (address) DO NOTHING RETURNING *",
        (address, host, helo, ptr, dedicated, enabled),
    ).fetchone()


def get_ip(conn: Connection, address: str, *, lock: bool = False) -> dict | None:
    return conn.execute(f"SELECT {IP_COLUMNS} FROM ips i WHERE i.address = %s" + (" FOR UPDATE" if lock else ""),
                        (address,)).fetchone()


def list_ips(conn: Connection, account_id: int | None = None, dedicated: bool | None = None) -> list[dict]:
    where, args = [], []
    if account_id is not None:
        where.append("i.account_id = %s")
        args.append(account_id)
    if dedicated is not None:
        where.append("i.dedicated = %s")
        args.append(dedicated)
    sql = f"SELECT {IP_COLUMNS}, (w.address IS NOT NULL) AS is_on_warmup FROM ips i" \
          " LEFT JOIN ip_warmups w ON w.address = i.address"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return conn.execute(sql + " ORDER BY i.address", args).fetchall()


def update_ip(conn: Connection, address: str, **changes) -> dict | None:
    allowed = {"host", "helo", "ptr", "enabled", "dedicated", "account_id", "assigned_at"}
    sets = [k for k in changes if k in allowed]
    if not sets:
        return get_ip(conn, address)
    sql = "UPDATE ips SET " + ", ".join(f"{k} = %s" for k in sets) + " WHERE address = %s RETURNING *"
    return conn.execute(sql, [changes[k] for k in sets] + [address]).fetchone()


def delete_ip(conn: Connection, address: str) -> bool:
    return conn.execute("DELETE FROM ips WHERE address = %s", (address,)).rowcount > 0


# domain assignments ----------------------------------------------------------------------------
def domain_ips(conn: Connection, domain_id: int) -> list[str]:
    rows = conn.execute("SELECT address FROM domain_ips WHERE domain_id = %s ORDER BY address", (domain_id,))
    return [r["address"] for r in rows.fetchall()]


def add_domain_ip(conn: Connection, domain_id: int, address: str) -> bool:
    return conn.execute("INSERT INTO domain_ips (domain_id, address) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                        (domain_id, address)).rowcount > 0


def remove_domain_ip(conn: Connection, domain_id: int, address: str) -> bool:
    return conn.execute("DELETE FROM domain_ips WHERE domain_id = %s AND address = %s",
                        (domain_id, address)).rowcount > 0


def domains_using_ip(conn: Connection, address: str) -> list[dict]:
    return conn.execute("SELECT d.id, d.name FROM domain_ips x JOIN domains d ON d.id = x.domain_id"
                        " WHERE x.address = %s ORDER BY d.name", (address,)).fetchall()


def remove_ip_everywhere(conn: Connection, address: str) -> None:
    conn.execute("DELETE FROM domain_ips WHERE address = %s", (address,))
    conn.execute("DELETE FROM ip_pool_members WHERE address = %s", (address,))


def domain_pool(conn: Connection, domain_id: int) -> str | None:
    row = conn.execute("SELECT pool_id FROM domain_ip_pools WHERE domain_id = %s", (domain_id,)).fetchone()
    return row["pool_id"] if row else None


def link_pool(conn: Connection, domain_id: int, pool_id: str) -> None:
    conn.execute("INSERT INTO domain_ip_pools (domain_id, pool_id) VALUES (%s, %s) ON CONFLICT (domain_id)"
                 " DO UPDATE SET pool_id = EXCLUDED.pool_id, created_at = now()", (domain_id, pool_id))


def unlink_pool(conn: Connection, domain_id: int) -> str | None:
    row = conn.execute("DELETE FROM domain_ip_pools WHERE domain_id = %s RETURNING pool_id",
                       (domain_id,)).fetchone()
    return row["pool_id"] if row else None


def domains_linked_to(conn: Connection, pool_id: str) -> list[dict]:
    return conn.execute("SELECT d.id, d.name, d.account_id FROM domain_ip_pools x JOIN domains d"
                        " ON d.id = x.domain_id WHERE x.pool_id = %s ORDER BY d.name", (pool_id,)).fetchall()


# pools -----------------------------------------------------------------------------------------
def insert_pool(conn: Connection, pool_id: str, name: str, description: str, account_id: int | None) -> dict:
    return conn.execute("INSERT INTO ip_pools (id, name, description, account_id) VALUES (%s, %s, %s, %s)"
                        " RETURNING *", (pool_id, name, description, account_id)).fetchone()


def get_pool(conn: Connection, pool_id: str, *, lock: bool = False) -> dict | None:
    return conn.execute("SELECT * FROM ip_pools WHERE id = %s" + (" FOR UPDATE" if lock else ""),
                        (pool_id,)).fetchone()


def list_pools(conn: Connection, account_id: int | None = None) -> list[dict]:
    sql = ("SELECT p.*, COALESCE(array_agg(m.address ORDER BY m.address) FILTER (WHERE m.address IS NOT NULL),"
           " '{}') AS ips, EXISTS (SELECT 1 FROM domain_ip_pools l WHERE l.pool_id = p.id) AS is_linked"
           " FROM ip_pools p LEFT JOIN ip_pool_members m ON m.pool_id = p.id")
    args: list = []
    if account_id is not None:
        sql += " WHERE p.account_id = %s"
        args.append(account_id)
    return conn.execute(sql + " GROUP BY p.id ORDER BY p.created_at, p.id", args).fetchall()


def update_pool(conn: Connection, pool_id: str, **changes) -> None:
    sets = [k for k in changes if k in ("name", "description", "account_id")]
    if sets:
        conn.execute("UPDATE ip_pools SET " + ", ".join(f"{k} = %s" for k in sets) + " WHERE id = %s",
                     [changes[k] for k in sets] + [pool_id])


def pool_ips(conn: Connection, pool_id: str) -> list[str]:
    rows = conn.execute("SELECT address FROM ip_pool_members WHERE pool_id = %s ORDER BY address", (pool_id,))
    return [r["address"] for r in rows.fetchall()]


def add_pool_ip(conn: Connection, pool_id: str, address: str) -> bool:
    return conn.execute("INSERT INTO ip_pool_members (pool_id, address) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                        (pool_id, address)).rowcount > 0


def remove_pool_ip(conn: Connection, pool_id: str, address: str) -> bool:
    return conn.execute("DELETE FROM ip_pool_members WHERE pool_id = %s AND address = %s",
                        (pool_id, address)).rowcount > 0


def delete_pool(conn: Connection, pool_id: str) -> bool:
    return conn.execute("DELETE FROM ip_pools WHERE id = %s", (pool_id,)).rowcount > 0


# the relay's view -------------------------------------------------------------------------------
def snapshot(conn: Connection) -> dict:
    """Everything egress selection needs, in one read."""
    return {
        "ips": conn.execute(f"SELECT {IP_COLUMNS} FROM ips i").fetchall(),
        "domain_ips": conn.execute("SELECT domain_id, address FROM domain_ips ORDER BY address").fetchall(),
        "domain_pools": conn.execute("SELECT domain_id, pool_id FROM domain_ip_pools").fetchall(),
        "pools": conn.execute("SELECT id, account_id FROM ip_pools").fetchall(),
        "members": conn.execute("SELECT pool_id, address FROM ip_pool_members ORDER BY address").fetchall(),
        "overflow": conn.execute("SELECT id AS domain_id, ip_overflow FROM domains"
                                 " WHERE ip_overflow IS NOT NULL").fetchall(),
        "warmups": conn.execute("SELECT address, plan, started_at FROM ip_warmups").fetchall(),
        "now": conn.execute("SELECT now() AS now").fetchone()["now"],
    }


# warm-up ---------------------------------------------------------------------------------------
def get_warmup(conn: Connection, address: str) -> dict | None:
    return conn.execute("SELECT * FROM ip_warmups WHERE address = %s", (address,)).fetchone()


def list_warmups(conn: Connection, account_id: int | None = None) -> list[dict]:
    sql = "SELECT w.* FROM ip_warmups w JOIN ips i ON i.address = w.address"
    args: list = []
    if account_id is not None:
        sql += " WHERE i.account_id = %s"
        args.append(account_id)
    return conn.execute(sql + " ORDER BY w.address", args).fetchall()


def start_warmup(conn: Connection, address: str, plan: list) -> dict:
    conn.execute("DELETE FROM ip_warmup_usage WHERE address = %s", (address,))
    return conn.execute(
        "INSERT INTO ip_warmups (address, plan) VALUES (%s, %s) ON CONFLICT (address) DO UPDATE"
        " SET plan = EXCLUDED.plan, started_at = now(), updated_at = now() RETURNING *",
        (address, Jsonb(plan)),
    ).fetchone()


def stop_warmup(conn: Connection, address: str) -> bool:
    conn.execute("DELETE FROM ip_warmup_usage WHERE address = %s", (address,))
    return conn.execute("DELETE FROM ip_warmups WHERE address = %s", (address,)).rowcount > 0


def usage(conn: Connection, address: str) -> list[dict]:
    return conn.execute("SELECT day_no, day_cap, reserved, used FROM ip_warmup_usage WHERE address = %s"
                        " ORDER BY day_no", (address,)).fetchall()


def reserve(conn: Connection, address: str, day_no: int, day_cap: int, want: int) -> int:
    """Take up to `want` of the day's quota; return how much was granted (0 when the day is spent)."""
    conn.execute("INSERT INTO ip_warmup_usage (address, day_no, day_cap) VALUES (%s, %s, %s)"
                 " ON CONFLICT DO NOTHING", (address, day_no, day_cap))
    row = conn.execute("SELECT day_cap, reserved FROM ip_warmup_usage WHERE address = %s AND day_no = %s"
                       " FOR UPDATE", (address, day_no)).fetchone()
    granted = max(0, min(want, row["day_cap"] - row["reserved"]))
    if granted:
        conn.execute("UPDATE ip_warmup_usage SET reserved = reserved + %s WHERE address = %s AND day_no = %s",
                     (granted, address, day_no))
    return granted


def spend(conn: Connection, address: str, day_no: int, count: int, release: int = 0) -> None:
    """Record `count` sends; optionally hand back `release` unspent reserved quota."""
    conn.execute("UPDATE ip_warmup_usage SET used = used + %s, reserved = GREATEST(reserved - %s, used + %s)"
                 " WHERE address = %s AND day_no = %s", (count, release, count, address, day_no))


# audit -----------------------------------------------------------------------------------------
def audit(conn: Connection, actor: str, action: str, *, address: str | None = None,
          account_id: int | None = None, domain: str | None = None, pool_id: str | None = None,
          detail: dict | None = None) -> None:
    conn.execute("INSERT INTO ip_audit (actor, action, address, account_id, domain, pool_id, detail)"
                 " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                 (actor, action, address, account_id, domain, pool_id, Jsonb(detail or {})))


def audit_log(conn: Connection, address: str | None = None, limit: int = 100) -> list[dict]:
    sql = "SELECT * FROM ip_audit"
    args: list = []
    if address:
        sql += " WHERE address = %s"
        args.append(address)
    return conn.execute(sql + " ORDER BY id DESC LIMIT %s", args + [limit]).fetchall()


def assignments(conn: Connection) -> list[dict]:
    return conn.execute("SELECT i.address, i.account_id, a.name AS account_name, i.assigned_at FROM ips i"
                        " JOIN accounts a ON a.id = i.account_id WHERE i.dedicated ORDER BY i.address").fetchall()


# the operator's inventory page ------------------------------------------------------------------
def domain_assignments(conn: Connection) -> list[dict]:
    """Every (address, domain) of domain_ips, with the domain's name and account."""
    return conn.execute("SELECT x.address, d.id AS domain_id, d.name, d.account_id FROM domain_ips x"
                        " JOIN domains d ON d.id = x.domain_id ORDER BY x.address, d.name").fetchall()


def pool_links(conn: Connection) -> list[dict]:
    """Every (pool, domain) of domain_ip_pools, with the domain's name and account."""
    return conn.execute("SELECT l.pool_id, d.id AS domain_id, d.name, d.account_id FROM domain_ip_pools l"
                        " JOIN domains d ON d.id = l.domain_id ORDER BY l.pool_id, d.name").fetchall()


def account_names(conn: Connection, account_ids: list[int]) -> dict[int, str]:
    rows = conn.execute("SELECT id, name FROM accounts WHERE id = ANY(%s)", (account_ids,)).fetchall()
    return {r["id"]: r["name"] for r in rows}


def recent_deliveries(conn: Connection, address: str, domain_ids: list[int], hours: float, scan: int,
                      limit: int) -> list[dict]:
    """Delivered events whose egress IP was `address`, newest first, among the last `scan` delivered
    events of each domain in `domain_ids` within `hours` (the events_domain_event index, read backwards
    from now and cut at `scan` per domain: bounded however busy a domain is)."""
    return conn.execute(
        """
        SELECT e.ts, e.recipient, e.message_id, d.name AS domain
        FROM unnest(%(domains)s::bigint[]) AS x(id)
        JOIN domains d ON d.id = x.id
        CROSS JOIN LATERAL (
            SELECT ts, recipient, message_id, data FROM events
            WHERE domain_id = x.id AND event = 'delivered' AND ts > now() - make_interval(secs => %(seconds)s)
            ORDER BY ts DESC, id DESC LIMIT %(scan)s
        ) e
        WHERE e.data->'envelope'->>'sending-ip' = %(address)s
        ORDER BY e.ts DESC LIMIT %(limit)s
        """, {"domains": domain_ids, "seconds": hours * 3600, "scan": scan, "address": address,
              "limit": limit}).fetchall()
