"""Export (GDPR Art. 20) and erasure (Art. 17) of one address's data within one account.

Erasure runs in one transaction across the stores that hold the address: the delivery schedule
(queued mail to it is cancelled), messages sent to it alone (bodies included), its events, and the
webhook payloads about it. Suppression entries are kept on purpose: they are what guarantees the
address is never mailed again after an unsubscribe or complaint; the suppressions API deletes them
if the person asks for that too. Aggregated stats hold no address and are kept.

export_account() is the account admin's "export my account's data" (the dashboard's account page): what
the account holds today, as JSON lines, without any secret. The full archive with messages and events is
issue 15's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from envoi.events.service import Events
from envoi.infra.db import Database
from envoi.mta.compose import normalize_address
from envoi.mta.stored_messages import StoredMessages
from envoi.suppression.service import Suppressions
from envoi.webhooks.service import Webhooks


class Privacy:
    def __init__(self, db: Database, accounts=None, storage: StoredMessages | None = None):
        self.db = db
        self.accounts = accounts
        self.storage = storage

    def close_account(self, account_id: int, *, actor: str, ip: str | None = None) -> dict:
        """The customer deleted the account: its keys, SMTP logins and users stop at once (Accounts.close)
        and its mail still waiting is cancelled. Its data stays until the purge (docs/account-state.md).
        Returns the closed account with `cancelled_recipients`."""
        row = self.accounts.close(account_id, actor=actor, ip=ip)
        return dict(row, cancelled_recipients=self.storage.cancel_account_queue(account_id))

    def export(self, account_id: int, address: str) -> dict:
        address = _canonical(address)
        with self.db.transaction() as conn:
            messages = StoredMessages.messages_to(conn, account_id, address)
            events = Events.for_recipient(conn, account_id, address)
            suppressions = Suppressions.entries_for(conn, account_id, address)
        return {
            "address": address,
            "exported_at": time.time(),
            "messages": [{**m, "created_at": m["created_at"].isoformat()} for m in messages],
            "events": events,
            "suppressions": [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()
                              if k != "domain_id"} for row in suppressions],
        }

    def export_account(self, account_id: int) -> Iterator[str]:
        """Everything the account holds today, without secrets, as JSON lines (see account_export_lines).
        An unknown account yields nothing."""
        with self.db.transaction() as conn:
            if conn.execute("SELECT 1 FROM accounts WHERE id = %s", (account_id,)).fetchone() is None:
                return iter(())
        return account_export_lines(self.db, account_id)

    def erase(self, account_id: int, address: str) -> dict:
        address = _canonical(address)
        with self.db.transaction() as conn:
            removed = StoredMessages.erase_recipient(conn, account_id, address)
            removed["events"] = Events.erase_recipient(conn, account_id, address)
            removed["webhook_deliveries"] = Webhooks.erase_recipient(conn, account_id, address)
        return {"address": address, "erased": removed,
                "kept": "suppression entries (so the address is never mailed again); delete them through"
                        " the suppressions API if asked"}


#: What the account export reads, section by section: (type, query). Columns are listed one by one so
#: that no secret (password hashes, TOTP secrets, key hashes, DKIM private keys, sealed webhook URLs)
#: can ever slip in when a table gains a column.
_ACCOUNT_SECTIONS = (
    ("account", "SELECT id, name, region, plan, created_at FROM accounts WHERE id = %s"),
    ("domain", "SELECT id, name, state, type, dkim_selector, dkim_public_key, dkim_key_size, spam_action,"
               " wildcard, web_prefix, web_scheme, require_tls, created_at FROM domains WHERE account_id = %s"
               " ORDER BY id"),
    ("user", "SELECT id, email, role, totp_secret IS NOT NULL AS totp_enabled, created_at FROM users"
             " WHERE account_id = %s ORDER BY id"),
    ("invitation", "SELECT id, email, role, invited_by, created_at, expires_at, accepted_at"
                   " FROM user_invitations WHERE account_id = %s ORDER BY id"),
    ("api_key", "SELECT k.id, k.role, d.name AS domain, k.description, k.hint, k.is_disabled, k.expires_at,"
                " k.created_at FROM api_keys k LEFT JOIN domains d ON d.id = k.domain_id"
                " WHERE k.account_id = %s ORDER BY k.created_at"),
    ("webhook", "SELECT d.name AS domain, w.event_type, w.url, w.created_at FROM webhooks w"  # url: password masked
                " JOIN domains d ON d.id = w.domain_id WHERE w.account_id = %s ORDER BY w.id"),
    ("bounce", "SELECT d.name AS domain, s.address, s.code, s.error, s.created_at FROM suppress_bounces s"
               " JOIN domains d ON d.id = s.domain_id WHERE d.account_id = %s ORDER BY d.id, s.address"),
    ("unsubscribe", "SELECT d.name AS domain, s.address, s.tags, s.created_at FROM suppress_unsubscribes s"
                    " JOIN domains d ON d.id = s.domain_id WHERE d.account_id = %s ORDER BY d.id, s.address"),
    ("complaint", "SELECT d.name AS domain, s.address, s.created_at FROM suppress_complaints s"
                  " JOIN domains d ON d.id = s.domain_id WHERE d.account_id = %s ORDER BY d.id, s.address"),
    ("allowlist", "SELECT d.name AS domain, s.value, s.type, s.reason, s.created_at FROM suppress_whitelists s"
                  " JOIN domains d ON d.id = s.domain_id WHERE d.account_id = %s ORDER BY d.id, s.value"),
)
_AUDIT_BATCH = 1000


def account_export_lines(db: Database, account_id: int) -> Iterator[str]:
    """The account's data as JSON lines ({"type": ..., "data": {...}}), one section after the other and
    the audit log in batches, so a large account streams without being held in memory or holding a
    database connection while the client reads."""
    yield _line("export", {"account_id": account_id, "exported_at": time.time(),
                           "note": "account data without secrets; message and event archives are not included"})
    for kind, sql in _ACCOUNT_SECTIONS:
        with db.transaction() as conn:
            rows = conn.execute(sql, (account_id,)).fetchall()
        for row in rows:
            yield _line(kind, row)
    last = None
    while True:
        with db.transaction() as conn:
            rows = conn.execute(
                "SELECT id, at, actor, action, target, ip, details FROM audit_log WHERE account_id = %s"
                " AND (%s::bigint IS NULL OR id > %s) ORDER BY id LIMIT %s",
                (account_id, last, last, _AUDIT_BATCH)).fetchall()
        for row in rows:
            yield _line("audit", row)
        if len(rows) < _AUDIT_BATCH:
            return
        last = rows[-1]["id"]


def _line(kind: str, data: dict) -> str:
    return json.dumps({"type": kind, "data": data}, default=_plain) + "\n"


def _plain(value):
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _canonical(address: str) -> str:
    # A person's request covers every spelling of their address: matched without regard to case.
    return normalize_address(address, "address").lower()
