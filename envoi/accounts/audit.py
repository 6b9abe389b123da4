"""The audit log of account actions: who (actor), what (action, target, details), when, from where (ip).

Actors are written as `user:<id>`, `key:<id>`, `operator:<id>` or `cli`. Entries are recorded in the
same transaction as the change they describe (pass `conn`), so a change and its entry stand or fall
together. Reading is always per account: a caller never names another account's entries.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime

from envoi.infra.db import Connection, Database, Jsonb

COLUMNS = ("id", "at", "actor", "action", "target", "ip", "details")
MAX_PAGE = 1000


@dataclass(frozen=True)
class AuditFilter:
    action: str | None = None  # exact, or a prefix ending in '.' ("user." = every user action)
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class Audit:
    def __init__(self, db: Database):
        self.db = db

    def record(self, account_id: int | None, actor: str, action: str, target: str = "", *, ip: str | None = None,
               details: dict | None = None, conn: Connection | None = None) -> None:
        sql = ("INSERT INTO audit_log (account_id, actor, action, target, ip, details)"
               " VALUES (%s, %s, %s, %s, %s, %s)")
        args = (account_id, actor, action, target, ip, Jsonb(details or {}))
        if conn is not None:
            conn.execute(sql, args)
            return
        with self.db.transaction() as own:
            own.execute(sql, args)

    def list(self, account_id: int | None, filters: AuditFilter = AuditFilter(), *, limit: int = 100,
             before: int | None = None) -> list[dict]:
        """Newest first; `before` (an entry id) pages on: pass the last id of the previous page."""
        where, args = self._where(account_id, filters)
        if before is not None:
            where.append("id < %s")
            args.append(before)
        args.append(max(1, min(limit, MAX_PAGE)))
        with self.db.transaction() as conn:
            return conn.execute(
                f"SELECT {', '.join(COLUMNS)} FROM audit_log WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT %s",
                args).fetchall()

    def export(self, account_id: int | None, filters: AuditFilter = AuditFilter(), fmt: str = "csv") -> str:
        """Every matching entry, oldest first, as CSV (with a header) or JSON lines."""
        where, args = self._where(account_id, filters)
        with self.db.transaction() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(COLUMNS)} FROM audit_log WHERE {' AND '.join(where)} ORDER BY id", args).fetchall()
        if fmt == "jsonl":
            return "".join(json.dumps(entry_json(r)) + "\n" for r in rows)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for r in rows:
            entry = entry_json(r)
            writer.writerow([*(entry[c] if entry[c] is not None else "" for c in COLUMNS[:-1]),
                             json.dumps(entry["details"])])
        return out.getvalue()

    @staticmethod
    def _where(account_id: int | None, filters: AuditFilter) -> tuple[list[str], list]:
        # Two spellings rather than IS NOT DISTINCT FROM, which the index on account_id cannot serve.
        where, args = (["account_id IS NULL"], []) if account_id is None else (["account_id = %s"], [account_id])
        if filters.action:
            if filters.action.endswith("."):
                where.append("starts_with(action, %s)")
            else:
                where.append("action = %s")
            args.append(filters.action)
        if filters.actor:
            where.append("actor = %s")
            args.append(filters.actor)
        if filters.since:
            where.append("at >= %s")
            args.append(filters.since)
        if filters.until:
            where.append("at < %s")
            args.append(filters.until)
        return where, args


def entry_json(row: dict) -> dict:
    return {**row, "at": row["at"].isoformat()}
