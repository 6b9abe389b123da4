"""Stored messages: what `storage.url` in an event points at (read, resend, cancel), and body retention."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re

from envoi.events.service import Events, NewEvent, item
from envoi.infra.crypto import Sealer
from envoi.infra.db import Database
from envoi.mta import store
from envoi.mta.compose import Draft, from_mime
from envoi.mta.errors import MessageNotFound, NotCancellable

CANCELLED = "cancelled"  # the failed event's reason and the recipient's last_message
CANCEL_BATCH = 1000  # recipients per transaction when a domain's whole queue is cleared
_MESSAGE_ID_HEADER = re.compile(rb"^Message-ID:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", re.IGNORECASE | re.MULTILINE)


class StoredMessages:
    def __init__(self, db: Database, sealer: Sealer, events: Events):
        self.db = db
        self.sealer = sealer
        self.events = events  # cancelling records `failed` events

    def get(self, domain_id: int, storage_key: str) -> tuple[dict, bytes] | None:
        """(row, MIME) while the body is kept; None once it expired or never existed."""
        with self.db.transaction() as conn:
            row = store.stored_message(conn, domain_id, storage_key)
        if row is None or row["body"] is None:
            return None
        return row, self.sealer.open(row["body"], row["storage_key"].encode())

    def resend_draft(self, domain: dict, storage_key: str, recipients: list[str]) -> Draft:
        """Mailgun's resend (POST /v3/domains/{d}/messages/{storage_key}): the stored message as a new
        draft to `recipients`, for Intake.accept. It gets a new Message-ID (it is a new message, with its
        own events and storage key) and keeps the original's envelope sender, tags, variables and
        options, but not its o:deliverytime: it goes now. The stored body was rendered when it was first
        accepted, so the draft is marked rendered: tracking is not applied twice (its links are the
        first sending's). MessageNotFound for another domain's key or a body past retention."""
        found = self.get(domain["id"], storage_key)
        if found is None:
            raise MessageNotFound()
        row, mime = found
        head_end = mime.find(b"\r\n\r\n") + 2
        mime = _MESSAGE_ID_HEADER.sub(b"", mime[:head_end]) + mime[head_end:]  # from_mime adds a new one
        draft = from_mime(domain["name"], mime, recipients, {}, method="http")
        return dataclasses.replace(draft, mail_from=row["mail_from"], tags=list(row["tags"] or []),
                                   user_variables=row["user_variables"] or {}, options=row["options"] or {},
                                   attachments=row["attachments"] or [], rendered=True)

    def cancel(self, domain: dict, storage_key: str) -> int:
        """Cancel a message still waiting (scheduled with o:deliverytime, or queued for a retry): its
        queued recipients that no relay holds become `failed` with a permanent `failed` event, reason
        "cancelled", and are never sent. Returns how many were cancelled. MessageNotFound for another
        domain's key; NotCancellable when nothing of it is waiting (delivered, failed, or being
        delivered right now: a relay holds its lease)."""
        with self.db.transaction() as conn:
            message, recipients = store.lock_message_recipients(conn, domain["id"], storage_key)
            if message is None:
                raise MessageNotFound()
            waiting = [r for r in recipients if r["status"] == "queued" and not r["leased"]]
            if not waiting:
                busy = any(r["status"] == "queued" for r in recipients)
                raise NotCancellable("The message is being delivered right now and cannot be cancelled" if busy
                                     else "The message was already delivered or failed; nothing to cancel")
            events = self._cancel(conn, [(r, message) for r in waiting])
        self.events.committed(events)
        return len(waiting)

    def cancel_queue(self, domain: dict) -> int:
        """Mailgun's DELETE /v3/{domain}/envelopes: cancel every recipient of the domain still waiting
        (as cancel() does, in transactions of CANCEL_BATCH); those a relay holds right now go on. Returns
        how many were cancelled."""
        return self._cancel_all(domain_id=domain["id"])

    def cancel_account_queue(self, account_id: int) -> int:
        """cancel_queue() for every domain of the account: what closing an account does to its mail still
        waiting (call it after Accounts.close, as `envoi accounts close` does)."""
        return self._cancel_all(account_id=account_id)

    def _cancel_all(self, **scope: int) -> int:
        total = 0
        while True:
            with self.db.transaction() as conn:
                rows = store.lock_queued(conn, CANCEL_BATCH, **scope)
                events = self._cancel(conn, [(r, {**r, "id": r["message_pk"]}) for r in rows])
            self.events.committed(events)
            total += len(rows)
            if len(rows) < CANCEL_BATCH:
                return total

    def _cancel(self, conn, pairs: list[tuple[dict, dict]]) -> list[NewEvent]:
        """Mark (recipient, message) pairs failed and record their events, in the caller's transaction."""
        if not pairs:
            return []
        store.cancel_recipients(conn, [r["id"] for r, _ in pairs], CANCELLED)
        status = {"code": None, "message": "Cancelled", "description": "Cancelled by the sender before delivery",
                  "attempt-no": 0}
        events = [NewEvent(m["account_id"], m["domain_id"], m["id"],
                           item("failed", message=m, recipient=r["address"], severity="permanent", reason=CANCELLED,
                                delivery_status=status, log_level="error", method=m["method"],
                                envelope={"sender": m["mail_from"], "targets": r["address"], "transport": "smtp"}))
                  for r, m in pairs]
        self.events.record(conn, events)
        return events

    @staticmethod
    def messages_to(conn, account_id: int, address: str) -> list[dict]:
        return store.messages_to(conn, account_id, address)

    @staticmethod
    def erase_recipient(conn, account_id: int, address: str) -> dict:
        return store.erase_recipient(conn, account_id, address)

    def purge_expired(self, batch: int = 1000) -> int:
        total = 0
        while True:
            with self.db.transaction() as conn:
                done = store.purge_expired_bodies(conn, batch)
            total += done
            if done < batch:
                return total


def parsed(row: dict, mime: bytes) -> dict:
    """Mailgun's JSON shape for a stored message."""
    msg = email.message_from_bytes(mime, policy=email.policy.default)
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    attachments = [
        {"name": part.get_filename(), "content-type": part.get_content_type(),
         "size": len(part.get_payload(decode=True) or b"")}
        for part in msg.iter_attachments()
    ]
    content_ids = {part["Content-ID"].strip("<>"): part.get_filename() for part in msg.walk()
                   if part["Content-ID"]}
    return {
        "recipients": ",".join(row["recipients"]),
        "sender": row["mail_from"],
        "from": msg.get("From", ""),
        "subject": msg.get("Subject", ""),
        "body-plain": plain.get_content() if plain is not None else "",
        "body-html": html.get_content() if html is not None else "",
        "stripped-text": plain.get_content().strip() if plain is not None else "",
        "attachments": attachments,
        "content-id-map": content_ids,
        "message-headers": [[k, str(v)] for k, v in msg.items()],
    }


def attachment(mime: bytes, index: int) -> tuple[str | None, str, bytes] | None:
    """The attachment at INDEX in parsed()'s "attachments" list: (file name, content type, bytes);
    None when there is no such attachment."""
    msg = email.message_from_bytes(mime, policy=email.policy.default)
    for number, part in enumerate(msg.iter_attachments()):
        if number == index:
            return part.get_filename(), part.get_content_type(), part.get_payload(decode=True) or b""
    return None
