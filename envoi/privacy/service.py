"""Export (GDPR Art. 20) and erasure (Art. 17) of one address's data within one account.

The stores that hold a person's address: the delivery schedule and the messages (metadata and sealed
bodies), the events (delivery and tracking: opens, clicks, unsubscribes), the webhook outbox (payloads
and the attempts' answers), the suppression lists (sealed, with a keyed hash), the sandbox's authorised
recipients, the live stream in Redis, inbound mail routed for or from it, and bulk validation results.
Export reads each;
erasure, in one transaction, deletes what is about the address alone, scrubs it from what others share
(a message sent to several people; see envoi.privacy.person), and drops the sealed copy of its
suppression entries while keeping their hash, so an unsubscribe, bounce or complaint still holds and
nothing readable remains. After the commit, its live-stream entries are deleted. Aggregated stats hold
no address and are kept.

export_account() is the account admin's "export my account's data" (API, CLI, dashboard): the whole
account as a JSON-lines archive without any secret (envoi.privacy.archive).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from envoi.events.service import Events
from envoi.infra.db import Database
from envoi.mta.compose import normalize_address
from envoi.mta.routes.service import Routes
from envoi.mta.stored_messages import StoredMessages
from envoi.privacy import archive, person
from envoi.suppression.service import Suppressions
from envoi.validation.service import Validation
from envoi.webhooks.service import Webhooks

TRACKING_EVENTS = ("opened", "clicked", "unsubscribed")


class Privacy:
    def __init__(self, db: Database, accounts=None, storage: StoredMessages | None = None,
                 suppressions: Suppressions | None = None, stream=None):
        self.db = db
        self.accounts = accounts
        self.storage = storage
        self.suppressions = suppressions
        self.stream = stream  # the live stream (envoi.events.stream.LiveStream)

    def close_account(self, account_id: int, *, actor: str, ip: str | None = None) -> dict:
        """The customer deleted the account: its keys, SMTP logins and users stop at once (Accounts.close)
        and its mail still waiting is cancelled. Its data stays until the purge (docs/account-state.md).
        Returns the closed account with `cancelled_recipients`."""
        row = self.accounts.close(account_id, actor=actor, ip=ip)
        return dict(row, cancelled_recipients=self.storage.cancel_account_queue(account_id))

    def export(self, account_id: int, address: str) -> dict:
        """Every store's data about the address, one key per store."""
        address = _canonical(address)
        with self.db.transaction() as conn:
            messages = StoredMessages.messages_to(conn, account_id, address)
            bodies = person.sealed_bodies(conn, account_id, address)
            events = Events.for_recipient(conn, account_id, address)
            webhooks = person.webhook_deliveries(conn, account_id, address)
            suppressions = self.suppressions.entries_for(conn, account_id, address)
            authorized = person.authorized_recipient(conn, account_id, address)
            received = Routes.received_about(conn, account_id, address)
            validations = Validation.export_address(conn, account_id, address)
        live = self.stream.entries_about(account_id, address) if self.stream is not None else []
        return {
            "address": address,
            "exported_at": time.time(),
            "messages": [_plain_row(m) for m in messages],
            "bodies": [{"message_id": b["message_id"], "mime": self._open_body(b)} for b in bodies],
            "events": events,
            "tracking": [e for e in events if e.get("event") in TRACKING_EVENTS],
            "webhook_deliveries": [_plain_row(w) for w in webhooks],
            "suppressions": [_plain_row(row, drop=("domain_id",)) for row in suppressions],
            "authorized_recipients": [_plain_row(r) for r in authorized],
            "live_stream": [{"id": entry_id, "event": data} for entry_id, data in live],
            "received": [_plain_row(row) for row in received],  # inbound mail routed for or from the address
            "validations": validations,  # bulk validation results holding the address
        }

    def _open_body(self, row: dict) -> str:
        return self.storage.sealer.open(row["body"], row["storage_key"].encode()).decode("utf-8", "replace")

    def export_account(self, account_id: int) -> Iterator[str]:
        """The account's whole data without secrets, as a JSON-lines archive (envoi.privacy.archive),
        streamed in batches. An unknown account yields nothing."""
        with self.db.transaction() as conn:
            if conn.execute("SELECT 1 FROM accounts WHERE id = %s", (account_id,)).fetchone() is None:
                return iter(())
        return archive.export_lines(self.db, account_id, self.suppressions.vault)

    def erase(self, account_id: int, address: str) -> dict:
        address = _canonical(address)
        with self.db.transaction() as conn:
            removed = StoredMessages.erase_recipient(conn, account_id, address)
            removed["events"] = Events.erase_recipient(conn, account_id, address)
            removed["webhook_deliveries"] = Webhooks.erase_recipient(conn, account_id, address)
            removed["suppression_entries"] = self.suppressions.erase(conn, account_id, address)
            removed["received"] = Routes.erase_address(conn, account_id, address)
            removed["validation_results"] = Validation.erase_address(conn, account_id, address)
            removed |= person.scrub(conn, account_id, address)
        if self.stream is not None:
            removed["live_stream_entries"] = self.stream.erase_about(account_id, address)
        return {"address": address, "erased": removed,
                "kept": "suppression entries, by a keyed hash only: the address is never mailed again and "
                        "nothing readable remains; delete them through the suppressions API if asked"}


def _plain(value):
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _plain_row(row: dict, drop: tuple = ()) -> dict:
    """A row as JSON values (dates as ISO 8601, nested ones too)."""
    return json.loads(json.dumps({k: v for k, v in row.items() if k not in drop}, default=_plain))


def _canonical(address: str) -> str:
    # A person's request covers every spelling of their address: matched without regard to case.
    return normalize_address(address, "address").lower()
