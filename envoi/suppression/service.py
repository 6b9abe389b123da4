"""Suppression lists (Mailgun-compatible, per domain): bounces, unsubscribes, complaints, whitelists.

Enforced by the relay at delivery time through `blocked()`; fed by the relay (`record_failures`, for
recipient-class hard bounces), by `complained` events (ARF reports, through an events writer), by the
unsubscribe endpoints and by the API. The whitelist wins over bounces: a whitelisted address never
enters the bounce list automatically, and a bounce entry does not block it.

Every entry's address is sealed and found by a keyed hash (sealed_address); erasing a person keeps
the hash, so their entries still suppress, and drops the sealed copy. Erased entries are left out of
lists and exports (nothing to show) but are still found, and deleted, by the address.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlencode

from envoi.events.service import NewEvent
from envoi.infra.db import Connection, Database
from envoi.suppression import store
from envoi.suppression.errors import InvalidInput, NotFound
from envoi.suppression.sealed_address import AddressVault

KINDS = ("bounces", "unsubscribes", "complaints", "whitelists")
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_BATCH = 1000
MAX_CSV_BYTES = 25 * 1024 * 1024
SCAN_CHUNK = 500  # entries read at a time while a `term` search scans a list
HASH_PIVOT = re.compile(r"^[0-9a-f]{64}$")  # an opaque page pivot; no address or domain looks like it
ADDRESS = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]{1,255}$")
DOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9-]{1,63}(\.[a-z0-9-]{1,63})+$")
TABLE_NAMES = {"bounces": "bounces", "unsubscribes": "unsubscribes", "complaints": "complaints",
               "whitelists": "whitelists"}
REMOVED = {"bounces": "Bounced address has been removed", "unsubscribes": "Unsubscribe event has been removed",
           "complaints": "Spam complaint has been removed", "whitelists": "Whitelist address/domain has been removed"}
CLEARED = {"bounces": "Bounced addresses for this domain have been removed",
           "unsubscribes": "Unsubscribe events for this domain have been removed",
           "complaints": "Complaint addresses for this domain have been removed",
           "whitelists": "Whitelist addresses/domains for this domain have been removed"}


def rfc2822(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S UTC")


def normalize_address(value: str | None) -> str:
    value = (value or "").strip()
    if not ADDRESS.match(value):
        raise InvalidInput(f"'{value}' is not a valid address" if value else "address parameter is missing")
    return value.lower()


def _created_at(value) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        if isinstance(value, int | float) or str(value).strip().replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(value), UTC)
        return parsedate_to_datetime(str(value).strip())
    except (TypeError, ValueError, OverflowError) as ex:
        raise InvalidInput(f"created_at '{value}' is not a valid RFC 2822 date") from ex


def item_json(kind: str, row: dict) -> dict:
    """The API's item; row["value"] is the opened address (the allowlist's address or domain)."""
    if kind == "bounces":
        return {"address": row["value"], "code": row["code"], "error": row["error"],
                "created_at": rfc2822(row["created_at"])}
    if kind == "unsubscribes":
        return {"address": row["value"], "tags": list(row["tags"]), "created_at": rfc2822(row["created_at"])}
    if kind == "complaints":
        return {"address": row["value"], "created_at": rfc2822(row["created_at"])}
    return {"value": row["value"], "reason": row["reason"], "type": row["type"],
            "createdAt": rfc2822(row["created_at"])}


class Suppressions:
    def __init__(self, db: Database, public_url: str, vault: AddressVault):
        self.db = db
        self.public_url = public_url
        self.vault = vault

    # the relay's hooks --------------------------------------------------------------------------
    def entries_for(self, conn: Connection, account_id: int, address: str) -> list[dict]:
        """Every entry of the account's domains for this address, opened (`address` is None once erased)."""
        rows = store.entries_for(conn, account_id, self.vault.lookup(address))
        out = []
        for row in rows:
            value = self.vault.open(row["table"], row["domain_id"], row["sealed"])
            out.append({k: v for k, v in row.items() if k not in ("table", "sealed") and not k.endswith(
                ("_hash", "_sealed"))} | {"address": value, "erased": value is None})
        return out

    def erase(self, conn: Connection, account_id: int, address: str) -> int:
        """A person's erasure: their entries keep suppressing (by hash) but hold nothing readable."""
        return store.erase(conn, account_id, self.vault.lookup(address))

    def blocked(self, conn: Connection, checks: list[tuple]) -> list[str | None]:
        """[(account_id, domain_id, address, tags)] -> suppress-* reason or None, in order."""
        if not checks:
            return []
        lookup = self.vault.lookup
        probes = [(domain_id, lookup(address), lookup(address.rpartition("@")[2]))
                  for _, domain_id, address, _ in checks]
        found = store.matches(conn, list(set(probes)))
        reasons: list[str | None] = []
        for (_, _, _, tags), (domain_id, h, _) in zip(checks, probes, strict=True):
            key = (domain_id, h)
            reason = None
            if key in found["complaints"]:
                reason = "suppress-complaint"
            elif key in found["unsubscribes"] and _unsubscribed(found["unsubscribes"][key], tags or []):
                reason = "suppress-unsubscribe"
            elif key in found["bounces"] and key not in found["whitelists"]:
                reason = "suppress-bounce"
            reasons.append(reason)
        return reasons

    def record_failures(self, conn: Connection, failures: list[tuple]) -> None:
        """Recipient-class hard bounces [(message_row, address, outcome)] join the domain's bounce list."""
        if not failures:
            return
        lookup = self.vault.lookup
        probes = [(message["domain_id"], lookup(address), lookup(address.rpartition("@")[2]))
                  for message, address, _ in failures]
        allowed = store.matches(conn, list(set(probes)))["whitelists"]
        rows = {}
        for (_, address, outcome), (domain_id, h, _) in zip(failures, probes, strict=True):
            if (domain_id, h) in allowed:
                continue  # the whitelist wins: never listed as a bounce
            rows[(domain_id, h)] = (domain_id, h, self.vault.seal("suppress_bounces", domain_id, address),
                                    str(outcome.code), (outcome.message or "")[:1000], None)
        if rows:
            store.upsert_bounces(conn, [rows[k] for k in sorted(rows)])

    def events_writer(self, conn: Connection, events: list[NewEvent]) -> None:
        """Inside the events' transaction: a `complained` event (ARF report) suppresses the address."""
        pairs = {(ev.domain_id, ev.data["recipient"].lower()) for ev in events
                 if ev.data.get("event") == "complained" and ev.data.get("recipient")}
        if pairs:
            rows = {(d, self.vault.lookup(a)): (d, self.vault.lookup(a),
                                                self.vault.seal("suppress_complaints", d, a), None)
                    for d, a in pairs}
            store.upsert_complaints(conn, [rows[k] for k in sorted(rows)])

    def add_unsubscribe(self, conn: Connection, domain_id: int, address: str, tags: list[str]) -> None:
        """Called by the unsubscribe endpoints in the transaction that records the event."""
        store.upsert_unsubscribes(conn, [(domain_id, self.vault.lookup(address),
                                          self.vault.seal("suppress_unsubscribes", domain_id, address),
                                          sorted(set(tags)) or ["*"], None)])

    # API --------------------------------------------------------------------------------------
    def page(self, domain: dict, kind: str, params: dict[str, str]) -> dict:
        """Mailgun's list page. Values are sealed, so the order is that of their keyed hashes: stable, and
        revealing nothing about the addresses. The `address` pivot of the paging URLs is the hash (hex,
        opaque); an address given instead (older URLs, the dashboard's links) is hashed. `term` keeps the
        entries starting with it, opened and checked as the scan goes."""
        try:
            limit = int(params.get("limit") or DEFAULT_LIMIT)
        except ValueError as ex:
            raise InvalidInput("limit must be an integer") from ex
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
        which = (params.get("page") or "first").lower()
        pivot = self._pivot(params.get("address"))
        term = (params.get("term") or "").strip().lower() or None  # Mailgun's `term`: values starting with it
        if which not in ("first", "next", "previous", "prev", "last"):
            raise InvalidInput("page must be first, next, previous or last")
        if term is not None and len(term) > 320:
            raise InvalidInput("term is too long")
        if which in ("first", "last"):
            pivot = None
        ascending = which in ("first", "next")
        rows = self._scan(domain["id"], kind, pivot, ascending, limit, term)
        if not ascending:
            rows.reverse()
        base = f"{self.public_url}/v3/{domain['name']}/{kind}"

        def url(page: str, pivot: bytes | None = None) -> str:
            query = {"page": page, "limit": limit}
            if pivot is not None:
                query["address"] = pivot.hex()
            if term is not None:
                query["term"] = term
            return f"{base}?{urlencode(query)}"

        first_key = rows[0]["hash"] if rows else pivot
        last_key = rows[-1]["hash"] if rows else pivot
        return {
            "items": [item_json(kind, r) for r in rows],
            "paging": {"first": url("first"), "next": url("next", last_key or b""),
                       "previous": url("previous", first_key or b""), "last": url("last")},
        }

    def _pivot(self, value: str | None) -> bytes | None:
        value = (value or "").strip().lower()
        if not value:
            return None
        if HASH_PIVOT.match(value):
            return bytes.fromhex(value)
        return self.vault.lookup(value)

    def _scan(self, domain_id: int, kind: str, pivot: bytes | None, ascending: bool, limit: int,
              term: str | None) -> list[dict]:
        """Up to `limit` readable entries from the pivot on, opened (row["value"], row["hash"])."""
        table = store.TABLES[kind][0]
        found: list[dict] = []
        chunk = limit if term is None else max(limit, SCAN_CHUNK)
        with self.db.transaction() as conn:
            while True:
                rows = store.page(conn, kind, domain_id, pivot=pivot, ascending=ascending, limit=chunk)
                for row in rows:
                    value = self.vault.open(table, domain_id, row["sealed"])
                    if term is None or value.startswith(term):
                        found.append(dict(row, value=value, hash=bytes(row["hash"])))
                        if len(found) == limit:
                            return found
                if len(rows) < chunk:
                    return found
                pivot = bytes(rows[-1]["hash"])

    def export(self, domain: dict, kind: str, chunk: int = MAX_LIMIT) -> Iterator[dict]:
        """Every readable entry of the list in the API's item shape (erased entries have nothing to
        show), in the pages' order, read a page at a time (one short transaction each) so a long list
        streams without holding a connection."""
        pivot = None
        while True:
            rows = self._scan(domain["id"], kind, pivot, True, chunk, None)
            yield from (item_json(kind, r) for r in rows)
            if len(rows) < chunk:
                return
            pivot = rows[-1]["hash"]

    def get(self, domain: dict, kind: str, value: str) -> dict:
        """One entry, found by its hash. An erased person's entry is still found by the address the
        caller gives: it shows that address (which the caller already knows) and keeps suppressing."""
        value = value.strip().lower()
        with self.db.transaction() as conn:
            row = store.get(conn, kind, domain["id"], self.vault.lookup(value))
        if row is None:
            raise NotFound(f"Address not found in {TABLE_NAMES[kind]} table")
        return item_json(kind, dict(row, value=value))

    def add(self, domain: dict, kind: str, fields: dict) -> dict:
        """One entry from form fields (a value may be a list: the last one counts, except tags)."""
        rows = self._rows(domain["id"], kind, [fields], form=True)
        with self.db.transaction() as conn:
            self._write(conn, kind, rows)
        if kind == "whitelists":
            row = rows[0]
            return {"message": "Address/Domain has been added to the whitelists table", "type": row[2],
                    "value": row[1]}
        return {"message": f"Address has been added to the {TABLE_NAMES[kind]} table", "address": rows[0][1]}

    def add_batch(self, domain: dict, kind: str, entries) -> dict:
        if not isinstance(entries, list):
            raise InvalidInput("expected a JSON array of objects")
        if len(entries) > MAX_BATCH:
            raise InvalidInput(f"too many entries: at most {MAX_BATCH} per request")
        if not all(isinstance(e, dict) for e in entries):
            raise InvalidInput("expected a JSON array of objects")
        rows = self._rows(domain["id"], kind, entries, form=False)
        with self.db.transaction() as conn:
            self._write(conn, kind, rows)
        return {"message": f"{len(rows)} addresses have been added to the {TABLE_NAMES[kind]} table"}

    def import_csv(self, domain: dict, kind: str, data: bytes) -> dict:
        """All rows are checked before any is written: one bad row changes nothing."""
        if len(data) > MAX_CSV_BYTES:
            raise InvalidInput("file is too large: at most 25 MB")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as ex:
            raise InvalidInput("file is not valid UTF-8 CSV") from ex
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise InvalidInput("file is empty: expected a CSV header line")
        header = [h.strip().lower() for h in reader.fieldnames]
        reader.fieldnames = header
        wanted = "address" if kind != "whitelists" else None
        if wanted and wanted not in header:
            raise InvalidInput("CSV header must have an 'address' column")
        if kind == "whitelists" and not {"address", "domain"} & set(header):
            raise InvalidInput("CSV header must have an 'address' or 'domain' column")
        entries = []
        try:
            for line in reader:
                entry = {k: (v or "").strip() for k, v in line.items() if k}
                if kind == "unsubscribes" and entry.get("tags"):
                    entry["tags"] = [t.strip() for t in re.split(r"[;,|]", entry["tags"]) if t.strip()]
                entries.append(entry)
        except csv.Error as ex:
            raise InvalidInput(f"malformed CSV: {ex}") from ex
        rows = self._rows(domain["id"], kind, entries, form=False)
        with self.db.transaction() as conn:
            self._write(conn, kind, rows)
        return {"message": "file uploaded successfully", "count": len(rows)}

    def delete(self, domain: dict, kind: str, value: str, tag: str | None = None) -> dict:
        value = value.strip().lower()
        lookup = self.vault.lookup(value)
        with self.db.transaction() as conn:
            if kind == "unsubscribes" and tag:
                done = store.remove_unsubscribe_tag(conn, domain["id"], lookup, tag)
            else:
                done = store.delete(conn, kind, domain["id"], lookup)
        if not done:
            raise NotFound(f"Address not found in {TABLE_NAMES[kind]} table")
        key = "value" if kind == "whitelists" else "address"
        return {"message": REMOVED[kind], key: value}

    def clear(self, domain: dict, kind: str) -> dict:
        with self.db.transaction() as conn:
            store.delete_all(conn, kind, domain["id"])
        return {"message": CLEARED[kind]}

    # helpers ----------------------------------------------------------------------------------
    def _rows(self, domain_id: int, kind: str, entries: list[dict], *, form: bool) -> list[tuple]:
        """Checked entries as (domain_id, value, ...fields); _write seals them."""
        def one(entry: dict, name: str):
            value = entry.get(name)
            if form and isinstance(value, list):
                return value[-1] if value else None
            return value

        rows: dict[str, tuple] = {}
        for n, entry in enumerate(entries, 1):
            try:
                if kind == "whitelists":
                    if one(entry, "address"):
                        value, wtype = normalize_address(str(one(entry, "address"))), "address"
                    elif one(entry, "domain"):
                        value, wtype = str(one(entry, "domain")).strip().lower(), "domain"
                        if not DOMAIN.match(value):
                            raise InvalidInput(f"'{value}' is not a valid domain")
                    else:
                        raise InvalidInput("address or domain parameter is missing")
                    rows[value] = (domain_id, value, wtype, str(one(entry, "reason") or "")[:1000])
                    continue
                address = normalize_address(str(one(entry, "address") or ""))
                created = _created_at(one(entry, "created_at"))
                if kind == "bounces":
                    code = str(one(entry, "code") or "550").strip()
                    if not code.isdigit() or len(code) > 3:
                        raise InvalidInput("code must be a number such as 550")
                    error = str(one(entry, "error") or "")
                    if len(error) > 1000:
                        raise InvalidInput("error is too long: at most 1000 characters")
                    rows[address] = (domain_id, address, code, error, created)
                elif kind == "unsubscribes":
                    tags = entry.get("tags") if "tags" in entry else entry.get("tag")
                    if tags is None or tags == "" or tags == []:
                        tags = ["*"]
                    if isinstance(tags, str):
                        tags = [tags]
                    if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() for t in tags):
                        raise InvalidInput("tags must be a list of tag names")
                    tags = sorted({t.strip() for t in tags})
                    if any(len(t) > 128 or not t.isprintable() for t in tags):
                        raise InvalidInput("a tag must be printable and at most 128 characters")
                    rows[address] = (domain_id, address, ["*"] if "*" in tags else tags, created)
                else:
                    rows[address] = (domain_id, address, created)
            except InvalidInput as ex:
                raise InvalidInput(str(ex) if form or len(entries) == 1 else f"entry {n}: {ex}") from ex
        return list(rows.values())

    def _write(self, conn: Connection, kind: str, rows: list[tuple]) -> None:
        if not rows:
            return
        table = store.TABLES[kind][0]
        rows = [(domain_id, self.vault.lookup(value), self.vault.seal(table, domain_id, value), *rest)
                for domain_id, value, *rest in rows]
        {"bounces": store.upsert_bounces, "unsubscribes": store.upsert_unsubscribes,
         "complaints": store.upsert_complaints, "whitelists": store.upsert_whitelists}[kind](conn, rows)


def _unsubscribed(tags: list[str], message_tags: list[str]) -> bool:
    return "*" in tags or bool(set(tags) & set(message_tags))
