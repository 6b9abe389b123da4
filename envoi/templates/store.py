"""SQL for templates and their versions. Every query is scoped by account, and by domain (NULL for the
account's own templates), so another tenant's template is never reachable."""

from __future__ import annotations

from envoi.infra.db import Connection, Jsonb

_SCOPE = "account_id = %(account)s AND domain_id IS NOT DISTINCT FROM %(domain)s"


def _scope(account_id: int, domain_id: int | None, **more) -> dict:
    return {"account": account_id, "domain": domain_id, **more}


def lock_scope(conn: Connection, account_id: int, domain_id: int | None) -> None:
    """Serialise creations in one scope, so the per-domain template limit holds under concurrency."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (0x746D706C, domain_id if domain_id is not None else -account_id))


def count(conn: Connection, account_id: int, domain_id: int | None) -> int:
    return conn.execute(f"SELECT count(*) AS n FROM templates WHERE {_SCOPE}", _scope(account_id, domain_id)).fetchone()["n"]


def find(conn: Connection, account_id: int, domain_id: int | None, name: str, *, lock: bool = False) -> dict | None:
    return conn.execute(f"SELECT * FROM templates WHERE {_SCOPE} AND name = %(name)s" + (" FOR UPDATE" if lock else ""),
                        _scope(account_id, domain_id, name=name)).fetchone()


def insert(conn: Connection, account_id: int, domain_id: int | None, name: str, description: str,
           created_by: str) -> dict:
    return conn.execute(
        "INSERT INTO templates (account_id, domain_id, name, description, created_by)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING *",
        (account_id, domain_id, name, description, created_by)).fetchone()


def page(conn: Connection, account_id: int, domain_id: int | None, limit: int, page: str, pivot: str | None):
    where, order, args = _SCOPE, "ASC", _scope(account_id, domain_id, limit=limit, pivot=pivot)
    if page == "next" and pivot is not None:
        where += " AND name > %(pivot)s"
    elif page == "prev" and pivot is not None:
        where, order = where + " AND name < %(pivot)s", "DESC"
    elif page == "last":
        order = "DESC"
    rows = conn.execute(f"SELECT * FROM templates WHERE {where} ORDER BY name {order} LIMIT %(limit)s", args).fetchall()
    return rows if order == "ASC" else rows[::-1]


def set_description(conn: Connection, template_id: int, description: str) -> None:
    conn.execute("UPDATE templates SET description = %s WHERE id = %s", (description, template_id))


def delete(conn: Connection, template_id: int) -> None:
    conn.execute("DELETE FROM templates WHERE id = %s", (template_id,))


def delete_all(conn: Connection, account_id: int, domain_id: int | None) -> int:
    return conn.execute(f"DELETE FROM templates WHERE {_SCOPE}", _scope(account_id, domain_id)).rowcount


# versions -----------------------------------------------------------------------------------------
def version_count(conn: Connection, template_id: int) -> int:
    return conn.execute("SELECT count(*) AS n FROM template_versions WHERE template_id = %s",
                        (template_id,)).fetchone()["n"]


def version(conn: Connection, template_id: int, tag: str | None) -> dict | None:
    """The version tagged `tag`, or the active one when tag is None."""
    if tag is None:
        return conn.execute("SELECT * FROM template_versions WHERE template_id = %s AND active",
                            (template_id,)).fetchone()
    return conn.execute("SELECT * FROM template_versions WHERE template_id = %s AND tag = %s",
                        (template_id, tag)).fetchone()


def insert_version(conn: Connection, template: dict, tag: str, content: str, comment: str, headers: dict | None,
                   active: bool) -> dict | None:
    if active:
        deactivate(conn, template["id"])
    return conn.execute(
        "INSERT INTO template_versions (template_id, account_id, tag, template, comment, headers, active)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING *",
        (template["id"], template["account_id"], tag, content, comment,
         Jsonb(headers) if headers is not None else None, active)).fetchone()


def deactivate(conn: Connection, template_id: int) -> None:
    conn.execute("UPDATE template_versions SET active = false WHERE template_id = %s AND active", (template_id,))


def update_version(conn: Connection, version_id: int, changes: dict) -> None:
    if not changes:
        return
    sets = ", ".join(f"{column} = %({column})s" for column in changes)
    values = {k: Jsonb(v) if k == "headers" and v is not None else v for k, v in changes.items()}
    conn.execute(f"UPDATE template_versions SET {sets} WHERE id = %(id)s", {**values, "id": version_id})


def delete_version(conn: Connection, version_id: int) -> None:
    conn.execute("DELETE FROM template_versions WHERE id = %s", (version_id,))


def versions_page(conn: Connection, template_id: int, limit: int, page: str, pivot: str | None) -> list[dict]:
    where, order, args = "template_id = %(t)s", "ASC", {"t": template_id, "limit": limit, "pivot": pivot}
    if page == "next" and pivot is not None:
        where += " AND tag > %(pivot)s"
    elif page == "prev" and pivot is not None:
        where, order = where + " AND tag < %(pivot)s", "DESC"
    elif page == "last":
        order = "DESC"
    rows = conn.execute(f"SELECT * FROM template_versions WHERE {where} ORDER BY tag {order} LIMIT %(limit)s",
                        args).fetchall()
    return rows if order == "ASC" else rows[::-1]


def for_send(conn: Connection, account_id: int, domain_id: int, name: str, tag: str | None) -> dict | None:
    """The version a send renders: the domain's template of that name, else the account's; the tagged
    version, or the active one. Never another account's (both scopes carry the account)."""
    return conn.execute(
        "SELECT t.name, v.tag, v.template, v.headers FROM templates t"
        " JOIN template_versions v ON v.template_id = t.id"
        " WHERE t.account_id = %(account)s AND (t.domain_id = %(domain)s OR t.domain_id IS NULL)"
        " AND t.name = %(name)s AND (v.tag = %(tag)s OR (%(tag)s::text IS NULL AND v.active))"
        " ORDER BY t.domain_id NULLS LAST LIMIT 1",
        {"account": account_id, "domain": domain_id, "name": name, "tag": tag}).fetchone()
