"""Inactive accounts: warned by mail, then purged unless they come back (data kept only as long as needed).

An account with no sign-in and no send (envoi.accounts.activity: `accounts.last_active_on`) for
ENVOI_INACTIVE_ACCOUNT_AFTER (3 years) gets a warning mail, sent through Envoi itself from
ENVOI_PLATFORM_SENDER to its admins (or, without admins, to every user). If it is still inactive
ENVOI_INACTIVE_ACCOUNT_NOTICE (30 days) later it is closed and purged (envoi.privacy.purge) at once. Any
activity in between clears the warning, so the count starts again.

Without a platform sender (unset, or its domain not a verified domain of this region) no warning can be
sent: the sweep logs that and warns nobody, and so purges nobody for inactivity. Accounts whose
processing is restricted at their owner's request are kept (that request is a request to keep the data).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from envoi.accounts.service import Principal
from envoi.infra.db import Database
from envoi.mta.compose import compose

log = logging.getLogger("envoi.privacy")
SUBJECT = "Your account {name} will be deleted for inactivity"
BODY = """Hello,

Nobody has signed in to the account "{name}" nor sent mail through it since {since}.
We keep data only as long as it is needed: unless the account is used again, it will be closed and all
of its data (domains, messages, events, suppressions, users) deleted on or after {deadline}.

To keep the account, simply sign in: {dashboard}
To keep a copy of its data first, an admin can download it from the account page.
"""


class Inactivity:
    def __init__(self, db: Database, accounts, intake, storage, purge, *, after: float, notice: float,
                 sender: str, public_url: str):
        self.db = db
        self.accounts = accounts
        self.intake = intake
        self.storage = storage
        self.purge = purge
        self.after = after
        self.notice = notice
        self.sender = sender
        self.dashboard = public_url.rstrip("/") + "/dashboard"

    def sweep(self, now: float | None = None) -> dict:
        """The scheduler's task: warn the accounts newly inactive, purge those warned long enough ago.
        Returns {"warned": ids, "purged": ids}."""
        at = datetime.fromtimestamp(time.time() if now is None else now, UTC)
        return {"warned": self.warn(at), "purged": self.purge_warned(at)}

    def warn(self, at: datetime) -> list[int]:
        sender_domain = self._sender_domain()
        if sender_domain is None:
            return []
        cutoff = (at - timedelta(seconds=self.after)).date()
        with self.db.transaction() as conn:
            due = conn.execute(
                "SELECT id, name, last_active_on FROM accounts WHERE state IN ('active', 'suspended')"
                " AND inactivity_warned_at IS NULL AND last_active_on <= %s AND id <> %s ORDER BY id",
                (cutoff, sender_domain["account_id"])).fetchall()
        warned = []
        for account in due:
            self._send_warning(sender_domain, account, at)
            with self.db.transaction() as conn:
                conn.execute("UPDATE accounts SET inactivity_warned_at = %s WHERE id = %s", (at, account["id"]))
            warned.append(account["id"])
        return warned

    def purge_warned(self, at: datetime) -> list[int]:
        cutoff = at - timedelta(seconds=self.notice)
        with self.db.transaction() as conn:
            due = conn.execute(
                "SELECT id FROM accounts WHERE state IN ('active', 'suspended', 'closed')"
                " AND inactivity_warned_at <= %s ORDER BY id", (cutoff,)).fetchall()
        purged = []
        for row in due:
            if self.accounts.get_account(row["id"])["state"] != "closed":
                self.accounts.close(row["id"], actor="inactivity")
                self.storage.cancel_account_queue(row["id"])
            self.purge.purge_account(row["id"], actor="inactivity")
            purged.append(row["id"])
        return purged

    def _sender_domain(self) -> dict | None:
        name = self.sender.rpartition("@")[2]
        if not self.sender or not name:
            log.warning("inactive accounts: ENVOI_PLATFORM_SENDER is not set; no warning sent, nothing purged")
            return None
        with self.db.transaction() as conn:
            row = conn.execute("SELECT account_id FROM domains WHERE name = %s AND state = 'active'",
                               (name,)).fetchone()
        domain = self.accounts.sending_domain(name, row["account_id"]) if row else None
        if domain is None:
            log.warning("inactive accounts: %s is not a verified domain of this region; no warning sent", name)
        return domain

    def _send_warning(self, domain: dict, account: dict, at: datetime) -> None:
        with self.db.transaction() as conn:
            users = conn.execute("SELECT email, role FROM users WHERE account_id = %s ORDER BY id",
                                 (account["id"],)).fetchall()
        to = [u["email"] for u in users if u["role"] == "admin"] or [u["email"] for u in users]
        if not to:
            log.info("inactive account %s has no user to warn", account["id"])
            return
        deadline = (at + timedelta(seconds=self.notice)).date().isoformat()
        text = BODY.format(name=account["name"], since=account["last_active_on"].isoformat(), deadline=deadline,
                           dashboard=self.dashboard)
        draft = compose(domain["name"], {"from": [self.sender], "to": to,
                                         "subject": [SUBJECT.format(name=account["name"])], "text": [text],
                                         "o:tracking": ["no"]}, [], [])
        self.intake.accept(Principal(None, domain["account_id"], "admin"), domain, draft)
