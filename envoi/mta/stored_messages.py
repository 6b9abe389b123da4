"""Stored messages: what `storage.url` in an event points at, and body retention."""

from __future__ import annotations

import email
import email.policy

from envoi.infra.crypto import Sealer
from envoi.infra.db import Database
from envoi.mta import store


class StoredMessages:
    def __init__(self, db: Database, sealer: Sealer):
        self.db = db
        self.sealer = sealer

    def get(self, domain_id: int, storage_key: str) -> tuple[dict, bytes] | None:
        """(row, MIME) while the body is kept; None once it expired or never existed."""
        with self.db.transaction() as conn:
            row = store.stored_message(conn, domain_id, storage_key)
        if row is None or row["body"] is None:
            return None
        return row, self.sealer.open(row["body"], row["storage_key"].encode())

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
