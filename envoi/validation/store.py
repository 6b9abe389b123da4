"""SQL for bulk validation jobs and their items (migration 0145); every query is scoped by account."""

from __future__ import annotations

from datetime import datetime

from envoi.infra.db import Connection, Jsonb, insert_columns

_JOB = "id, account_id, list_id, status, quantity, records_processed, created_at, updated_at, expires_at"
RUNNING = ("created", "processing")


def insert_job(conn: Connection, account_id: int, list_id: str, addresses: list[str], expires_at: datetime) -> dict:
    job = conn.execute(
        f"INSERT INTO validation_jobs (account_id, list_id, quantity, expires_at) VALUES (%s, %s, %s, %s)"
        f" ON CONFLICT (account_id, list_id) DO NOTHING RETURNING {_JOB}",
        (account_id, list_id, len(addresses), expires_at)).fetchone()
    if job is None:
        return None
    rows = [(job["id"], n, account_id, address) for n, address in enumerate(addresses)]
    insert_columns(conn, "validation_items", (("job_id", "bigint"), ("position", "integer"),
                                              ("account_id", "bigint"), ("address", "text")), rows)
    return job


def running_count(conn: Connection, account_id: int) -> int:
    return conn.execute("SELECT count(*) AS n FROM validation_jobs WHERE account_id = %s AND status = ANY(%s)",
                        (account_id, list(RUNNING))).fetchone()["n"]


def job(conn: Connection, account_id: int, list_id: str) -> dict | None:
    return conn.execute(f"SELECT {_JOB} FROM validation_jobs WHERE account_id = %s AND list_id = %s",
                        (account_id, list_id)).fetchone()


def job_by_id(conn: Connection, job_id: int) -> dict | None:
    return conn.execute(f"SELECT {_JOB} FROM validation_jobs WHERE id = %s", (job_id,)).fetchone()


def jobs_page(conn: Connection, account_id: int, limit: int, after: int | None, before: int | None) -> list[dict]:
    """Newest first; `after` / `before` are job ids (keyset paging)."""
    if before is not None:
        rows = conn.execute(f"SELECT {_JOB} FROM validation_jobs WHERE account_id = %s AND id > %s"
                            " ORDER BY id LIMIT %s", (account_id, before, limit)).fetchall()
        return rows[::-1]
    return conn.execute(f"SELECT {_JOB} FROM validation_jobs WHERE account_id = %s AND id < %s"
                        " ORDER BY id DESC LIMIT %s",
                        (account_id, after if after is not None else 2**62, limit)).fetchall()


def count_jobs(conn: Connection, account_id: int) -> int:
    return conn.execute("SELECT count(*) AS n FROM validation_jobs WHERE account_id = %s",
                        (account_id,)).fetchone()["n"]


def summary(conn: Connection, job_id: int) -> dict[tuple[str, str], int]:
    rows = conn.execute("SELECT result->>'result' AS result, result->>'risk' AS risk, count(*) AS n"
                        " FROM validation_items WHERE job_id = %s AND result IS NOT NULL GROUP BY 1, 2",
                        (job_id,)).fetchall()
    return {(r["result"], r["risk"]): r["n"] for r in rows}


def pending(conn: Connection, job_id: int, limit: int) -> list[dict]:
    return conn.execute("SELECT position, address FROM validation_items WHERE job_id = %s AND result IS NULL"
                        " ORDER BY position LIMIT %s", (job_id, limit)).fetchall()


def save_results(conn: Connection, job_id: int, results: list[tuple[int, dict]]) -> int:
    """Store results of items still pending (a batch run twice counts once); returns how many were new."""
    if not results:
        return 0
    cur = conn.execute(
        "UPDATE validation_items i SET result = u.result FROM unnest(%s::integer[], %s::jsonb[]) AS u(position, result)"
        " WHERE i.job_id = %s AND i.position = u.position AND i.result IS NULL",
        ([p for p, _ in results], [Jsonb(r) for _, r in results], job_id))
    saved = cur.rowcount
    conn.execute("UPDATE validation_jobs SET records_processed = records_processed + %s, status = 'processing',"
                 " updated_at = now() WHERE id = %s", (saved, job_id))
    return saved


def finish(conn: Connection, job_id: int) -> None:
    conn.execute("UPDATE validation_jobs SET status = 'uploaded', updated_at = now() WHERE id = %s"
                 " AND NOT EXISTS (SELECT 1 FROM validation_items WHERE job_id = %s AND result IS NULL)",
                 (job_id, job_id))


def results(conn: Connection, job_id: int, after: int, limit: int) -> list[dict]:
    return conn.execute("SELECT position, address, result FROM validation_items WHERE job_id = %s AND position > %s"
                        " ORDER BY position LIMIT %s", (job_id, after, limit)).fetchall()


def delete_job(conn: Connection, account_id: int, list_id: str) -> bool:
    return conn.execute("DELETE FROM validation_jobs WHERE account_id = %s AND list_id = %s",
                        (account_id, list_id)).rowcount > 0


def delete_expired(conn: Connection, now: datetime, limit: int) -> int:
    return conn.execute("DELETE FROM validation_jobs WHERE id IN (SELECT id FROM validation_jobs WHERE expires_at <= %s"
                        " LIMIT %s)", (now, limit)).rowcount


def stalled(conn: Connection, older_than: datetime) -> list[int]:
    rows = conn.execute("SELECT id FROM validation_jobs WHERE status = ANY(%s) AND updated_at < %s",
                        (list(RUNNING), older_than)).fetchall()
    return [r["id"] for r in rows]


def touch(conn: Connection, job_id: int) -> None:
    conn.execute("UPDATE validation_jobs SET updated_at = now() WHERE id = %s", (job_id,))


def items_for(conn: Connection, account_id: int, address: str) -> list[dict]:
    return conn.execute(
        "SELECT j.list_id, j.created_at, i.address, i.result FROM validation_items i JOIN validation_jobs j"
        " ON j.id = i.job_id WHERE i.account_id = %s AND lower(i.address) = %s ORDER BY j.id, i.position",
        (account_id, address.lower())).fetchall()


def erase_address(conn: Connection, account_id: int, address: str) -> int:
    """Delete the address's rows from the account's jobs (their counts keep what was processed)."""
    return conn.execute("DELETE FROM validation_items WHERE account_id = %s AND lower(address) = %s",
                        (account_id, address.lower())).rowcount
