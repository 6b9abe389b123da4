"""Purging a deleted account: every row, stored body, key and Redis entry of it, a while after it closed.

Closing (Privacy.close_account) stops the account at once; its data stays for ENVOI_ACCOUNT_PURGE_DELAY
(default 30 days, never more than 90) so a mistaken deletion can be undone by an operator, then the
scheduler's purge removes it. The purge works table by table in batches, one short transaction each
(children before parents; stored bodies live in `messages.body` and go with their rows), so a large
account never holds a long lock and a crash in the middle loses nothing: the account row is removed
last, so the account is still due and a rerun picks up where the crash left it. Redis entries (the live
event stream, quota counters, failed-login counters) are removed before the account row for the same
reason. What stays: one operator-level audit entry (`account.purged`, account_id NULL) that says the
account with that number was purged, with no personal data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from envoi.infra.db import Database
from envoi.privacy.archive import OF_ACCOUNT, SECTIONS

log = logging.getLogger("envoi.privacy")
MAX_DELAY = 90 * 86400.0  # the privacy policy's promise
BATCH = 1000

#: Rows that go with their parent's (ON DELETE CASCADE, through an index): a message takes its recipients,
#: a recipient its bounce reports. Deleting them by account would scan the table once per batch.
_CASCADED = {"recipients", "bounce_reports"}

#: Tables of the account outside the archive: deleted whole (small) before the account row.
_EXTRA = (
    "DELETE FROM event_stats_pending WHERE account_id = %(account)s",
    "DELETE FROM ip_audit WHERE account_id = %(account)s OR domain = ANY(%(domains)s)",
    "UPDATE stripe_events SET account_id = NULL WHERE account_id = %(account)s",
)


class Purge:
    def __init__(self, db: Database, redis, region: str, *, delay: float, accounts, audit, throttle=None,
                 batch: int = BATCH):
        if delay > MAX_DELAY:
            raise ValueError(f"the purge delay may not exceed 90 days ({delay / 86400:g} days given)")
        self.db = db
        self.redis = redis
        self.region = region
        self.delay = delay
        self.accounts = accounts  # its caches are told the account is gone
        self.audit = audit
        self.throttle = throttle  # the dashboard's failed-login counters (keyed by a hash of the email)
        self.batch = batch

    def due(self, now: float | None = None) -> list[int]:
        """Closed accounts whose delay has run out, oldest first."""
        cutoff = datetime.fromtimestamp(time.time() if now is None else now, UTC) - timedelta(seconds=self.delay)
        with self.db.transaction() as conn:
            rows = conn.execute("SELECT id FROM accounts WHERE state = 'closed' AND closed_at <= %s"
                                " ORDER BY closed_at, id", (cutoff,)).fetchall()
        return [row["id"] for row in rows]

    def run(self, now: float | None = None) -> list[int]:
        """The scheduler's sweep: purge every account due. Returns their ids."""
        purged = []
        for account_id in self.due(now):
            self.purge_account(account_id)
            purged.append(account_id)
        return purged

    def purge_account(self, account_id: int, *, actor: str = "scheduler",
                      after_batch: Callable[[str], None] = lambda table: None) -> dict[str, int]:
        """Remove everything of the account (closed or not: the caller decides). Idempotent: an account
        already gone is a no-op. `after_batch(table)` runs after each committed batch (tests crash there).
        Returns the rows removed per table."""
        with self.db.transaction() as conn:
            if conn.execute("SELECT 1 FROM accounts WHERE id = %s", (account_id,)).fetchone() is None:
                return {}
            domains = conn.execute("SELECT id, name FROM domains WHERE account_id = %s", (account_id,)).fetchall()
            emails = [r["email"] for r in conn.execute("SELECT email FROM users WHERE account_id = %s",
                                                       (account_id,)).fetchall()]
        params = {"account": account_id, "domains": [d["name"] for d in domains],
                  "domain_ids": [d["id"] for d in domains]}
        removed: dict[str, int] = {}
        for section in reversed(SECTIONS):  # children before parents
            if section.table == "accounts" or section.table in _CASCADED:
                continue
            scopes = [section.scope]
            if "domain_id" in section.columns and section.scope == OF_ACCOUNT:
                # The large tables are indexed by domain, not by account: by domain first, then by account
                # for what is left (rows of a domain the customer removed earlier), usually nothing.
                scopes.insert(0, f"domain_id = ANY(%(domain_ids)s) AND {OF_ACCOUNT}")
            removed[section.table] = sum(self._delete_batched(section.table, section.key, scope, params, after_batch)
                                         for scope in scopes)
        with self.db.transaction() as conn:
            for sql in _EXTRA:
                conn.execute(sql, params)
        self._forget_in_redis(account_id, emails)
        with self.db.transaction() as conn:
            # The rest (sessions, recovery codes, signing keys, IP pools...) cascades from the account row.
            conn.execute("DELETE FROM accounts WHERE id = %s", (account_id,))
            self.audit.record(None, actor, "account.purged", conn=conn, details={"account_id": account_id})
        self.accounts.forget_account(account_id)
        log.info("account %s purged", account_id)
        return removed

    def _delete_batched(self, table: str, key: tuple[str, ...], scope: str, params: dict,
                        after_batch: Callable[[str], None]) -> int:
        keys = ", ".join(key)
        sql = (f"DELETE FROM {table} WHERE ({keys}) IN (SELECT {keys} FROM {table} WHERE {scope}"
               f" LIMIT {int(self.batch)}) AND {scope}")  # repeated: on the partitioned events, prunes to its rows
        total = 0
        while True:
            with self.db.transaction() as conn:
                count = conn.execute(sql, params).rowcount
            total += count
            if count == 0:
                return total
            after_batch(table)

    def _forget_in_redis(self, account_id: int, emails: list[str]) -> None:
        prefix = f"envoi:{self.region}"
        names = [f"{prefix}:events:live:{account_id}",
                 *self.redis.scan_iter(match=f"{prefix}:quota:{account_id}:*", count=1000)]
        if names:
            self.redis.delete(*names)
        if self.throttle is not None:
            for email in emails:
                self.throttle.succeeded(email)  # drops the email's failed-login counter
