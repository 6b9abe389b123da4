"""Export (GDPR Art. 20) and erasure (Art. 17) of one address's data within one account.

Erasure runs in one transaction across the stores that hold the address: the delivery schedule
(queued mail to it is cancelled), messages sent to it alone (bodies included), its events, the
webhook payloads about it, and its bulk validation results. Suppression entries are kept on purpose: they are what guarantees the
address is never mailed again after an unsubscribe or complaint; the suppressions API deletes them
if the person asks for that too. Aggregated stats hold no address and are kept.

export_account() is the account admin's "export my account's data" (API, CLI, dashboard): the whole
account as a JSON-lines archive without any secret (envoi.privacy.archive).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from envoi.events.service import Events
from envoi.infra.db import Database
from envoi.mta.compose import normalize_address
from envoi.mta.stored_messages import StoredMessages
from envoi.privacy import archive
from envoi.suppression.service import Suppressions
from envoi.validation.service import Validation
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
            validations = Validation.export_address(conn, account_id, address)
        return {
            "address": address,
            "exported_at": time.time(),
            "messages": [{**m, "created_at": m["created_at"].isoformat()} for m in messages],
            "events": events,
            "suppressions": [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()
                              if k != "domain_id"} for row in suppressions],
            "validations": validations,  # bulk validation results holding the address
        }

    def export_account(self, account_id: int) -> Iterator[str]:
        """The account's whole data without secrets, as a JSON-lines archive (envoi.privacy.archive),
        streamed in batches. An unknown account yields nothing."""
        with self.db.transaction() as conn:
            if conn.execute("SELECT 1 FROM accounts WHERE id = %s", (account_id,)).fetchone() is None:
                return iter(())
        return archive.export_lines(self.db, account_id)

    def erase(self, account_id: int, address: str) -> dict:
        address = _canonical(address)
        with self.db.transaction() as conn:
            removed = StoredMessages.erase_recipient(conn, account_id, address)
            removed["events"] = Events.erase_recipient(conn, account_id, address)
            removed["webhook_deliveries"] = Webhooks.erase_recipient(conn, account_id, address)
            removed["validation_results"] = Validation.erase_address(conn, account_id, address)
        return {"address": address, "erased": removed,
                "kept": "suppression entries (so the address is never mailed again); delete them through"
                        " the suppressions API if asked"}


def _canonical(address: str) -> str:
    # A person's request covers every spelling of their address: matched without regard to case.
    return normalize_address(address, "address").lower()
