"""SQL for mailing lists and their members; every statement is scoped by the account."""

from __future__ import annotations

from envoi.infra.db import Connection, Jsonb

_LIST = ("SELECT l.*, (SELECT count(*) FROM mailing_list_members m WHERE m.list_id = l.id) AS members_count"
         " FROM mailing_lists l")


def account_domain(conn: Connection, account_id: int, name: str) -> dict | None:
    return conn.execute("SELECT id, name FROM domains WHERE name = %s AND account_id = %s",
                        (name, account_id)).fetchone()


def insert_list(conn: Connection, account_id: int, domain_id: int, row: dict) -> None:
    conn.execute("INSERT INTO mailing_lists (account_id, domain_id, address, name, description, access_level,"
                 " reply_preference) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                 (account_id, domain_id, row["address"], row["name"], row["description"], row["access_level"],
                  row["reply_preference"]))


def get_list(conn: Connection, account_id: int, address: str, *, for_update: bool = False) -> dict | None:
    return conn.execute(_LIST + " WHERE l.account_id = %s AND l.address = %s" + (" FOR UPDATE" if for_update else ""),
                        (account_id, address)).fetchone()


def update_list(conn: Connection, list_id: int, columns: dict) -> None:
    names = list(columns)
    conn.execute(f"UPDATE mailing_lists SET {', '.join(f'{n} = %s' for n in names)} WHERE id = %s",
                 [*columns.values(), list_id])


def delete_list(conn: Connection, list_id: int) -> None:
    conn.execute("DELETE FROM mailing_lists WHERE id = %s", (list_id,))


def count_lists(conn: Connection, account_id: int, address: str | None) -> int:
    sql, args = "SELECT count(*) AS n FROM mailing_lists WHERE account_id = %s", [account_id]
    if address:
        sql, args = sql + " AND address = %s", [*args, address]
    return conn.execute(sql, args).fetchone()["n"]


def lists_by_skip(conn: Connection, account_id: int, address: str | None, limit: int, skip: int) -> list[dict]:
    sql, args = _LIST + " WHERE l.account_id = %s", [account_id]
    if address:
        sql, args = sql + " AND l.address = %s", [*args, address]
    return conn.execute(sql + " ORDER BY l.address LIMIT %s OFFSET %s", [*args, limit, skip]).fetchall()


def lists_by_pivot(conn: Connection, account_id: int, pivot: str | None, limit: int, descending: bool) -> list[dict]:
    """A page of lists after (or, descending, before) the pivot address; None: from the first or last."""
    sql, args = _LIST + " WHERE l.account_id = %s", [account_id]
    if pivot is not None:
        sql, args = sql + (" AND l.address < %s" if descending else " AND l.address > %s"), [*args, pivot]
    rows = conn.execute(sql + f" ORDER BY l.address {'DESC' if descending else 'ASC'} LIMIT %s",
                        [*args, limit]).fetchall()
    return rows[::-1] if descending else rows


def account_list_addresses(conn: Connection, account_id: int) -> dict[str, int]:
    return {r["address"]: r["id"] for r in conn.execute(
        "SELECT address, id FROM mailing_lists WHERE account_id = %s", (account_id,)).fetchall()}


# members ----------------------------------------------------------------------------------------
_MEMBER = "SELECT address, name, vars, subscribed FROM mailing_list_members"


def get_member(conn: Connection, list_id: int, address: str) -> dict | None:
    return conn.execute(_MEMBER + " WHERE list_id = %s AND address = %s", (list_id, address)).fetchone()


def _member_filter(list_id: int, subscribed: bool | None) -> tuple[str, list]:
    sql, args = " WHERE list_id = %s", [list_id]
    if subscribed is not None:
        sql, args = sql + " AND subscribed = %s", [*args, subscribed]
    return sql, args


def count_members(conn: Connection, list_id: int, subscribed: bool | None) -> int:
    where, args = _member_filter(list_id, subscribed)
    return conn.execute("SELECT count(*) AS n FROM mailing_list_members" + where, args).fetchone()["n"]


def members_by_skip(conn: Connection, list_id: int, subscribed: bool | None, limit: int, skip: int) -> list[dict]:
    where, args = _member_filter(list_id, subscribed)
    return conn.execute(_MEMBER + where + " ORDER BY address LIMIT %s OFFSET %s", [*args, limit, skip]).fetchall()


def members_by_pivot(conn: Connection, list_id: int, subscribed: bool | None, pivot: str | None, limit: int,
                     descending: bool) -> list[dict]:
    where, args = _member_filter(list_id, subscribed)
    if pivot is not None:
        where, args = where + (" AND address < %s" if descending else " AND address > %s"), [*args, pivot]
    rows = conn.execute(_MEMBER + where + f" ORDER BY address {'DESC' if descending else 'ASC'} LIMIT %s",
                        [*args, limit]).fetchall()
    return rows[::-1] if descending else rows


def subscribed_members(conn: Connection, list_id: int) -> list[dict]:
    """address, name, vars of every subscribed member: the one query a send to the list makes."""
    return conn.execute("SELECT address, name, vars FROM mailing_list_members WHERE list_id = %s AND subscribed"
                       " ORDER BY address", (list_id,)).fetchall()


def all_member_addresses(conn: Connection, list_id: int) -> list[str]:
    return [r["address"] for r in conn.execute(
        "SELECT address FROM mailing_list_members WHERE list_id = %s ORDER BY address", (list_id,)).fetchall()]


def upsert_members(conn: Connection, list_id: int, account_id: int, members: list[dict], *, update: bool) -> int:
    """Insert members (address, name, vars, subscribed); with update, an existing one takes the new
    values, else it is left as it is. Returns how many rows were written."""
    conflict = (" ON CONFLICT (list_id, address) DO UPDATE SET name = EXCLUDED.name, vars = EXCLUDED.vars,"
                " subscribed = EXCLUDED.subscribed") if update else " ON CONFLICT (list_id, address) DO NOTHING"
    cur = conn.execute(
        "INSERT INTO mailing_list_members (list_id, account_id, address, name, vars, subscribed)"
        " SELECT %s, %s, u.address, u.name, u.vars, u.subscribed"
        " FROM unnest(%s::text[], %s::text[], %s::jsonb[], %s::boolean[]) AS u(address, name, vars, subscribed)"
        + conflict,
        (list_id, account_id, [m["address"] for m in members], [m["name"] for m in members],
         [Jsonb(m["vars"]) for m in members], [m["subscribed"] for m in members]))
    return cur.rowcount


def update_member(conn: Connection, list_id: int, address: str, columns: dict) -> None:
    names = list(columns)
    values = [Jsonb(v) if n == "vars" else v for n, v in columns.items()]
    conn.execute(f"UPDATE mailing_list_members SET {', '.join(f'{n} = %s' for n in names)}"
                 " WHERE list_id = %s AND address = %s", [*values, list_id, address])


def delete_member(conn: Connection, list_id: int, address: str) -> int:
    return conn.execute("DELETE FROM mailing_list_members WHERE list_id = %s AND address = %s",
                        (list_id, address)).rowcount


def unsubscribe(conn: Connection, account_id: int, list_address: str, member: str) -> int:
    return conn.execute(
        "UPDATE mailing_list_members m SET subscribed = false FROM mailing_lists l"
        " WHERE l.id = m.list_id AND l.account_id = %s AND l.address = %s AND m.address = %s",
        (account_id, list_address, member)).rowcount
