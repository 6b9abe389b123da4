"""The account's whole data as a JSON-lines archive (GDPR Art. 15/20), and its restore (`envoi accounts import`).

One line per row: {"type": section, "data": {column: value}}, between a header line ("export": format,
version, account, region, time) and a trailer line ("end": rows per section), so a truncated download
is seen as such. Sections come in dependency order (account, domains, ..., audit log) and each is read
in keyset-paged batches, one short transaction per batch: memory stays constant and no database
connection is held while the client reads.

Columns are listed one by one so that no secret (password hashes, TOTP secrets, key hashes, DKIM
private keys, sealed webhook URLs, tracking of sessions) can slip in when a table gains a column. Stored
message bodies are not part of the archive (their metadata is); they are retained only a few days.

Restoring (import_archive) writes the rows back with their ids into a database of the same region where
the account does not exist. Secrets cannot come back: the restored API keys, SMTP logins and invitations
are unusable (random hashes), users must reset their password (and set up TOTP again), DKIM keys must be
rotated (the private key is empty), webhook URLs keep their masked password.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from envoi.infra.db import Connection, Database, Jsonb, is_data_error
from envoi.privacy.errors import ArchiveInvalid
from envoi.suppression.sealed_address import AddressVault

FORMAT = "envoi-account-archive"
VERSION = 1
BATCH = 1000

OF_ACCOUNT = "account_id = %(account)s"
_OF_DOMAINS = "domain_id IN (SELECT id FROM domains WHERE account_id = %(account)s)"
# Webhook attempts go with their delivery's account: a parent's deliveries of its subaccounts' events
# are under the subaccount's domains.
_OF_DELIVERIES = "delivery_id IN (SELECT id FROM webhook_deliveries WHERE account_id = %(account)s)"


@dataclass(frozen=True)
class Section:
    kind: str  # the line's "type"
    table: str
    columns: tuple[str, ...]  # exported and restored as they are
    key: tuple[str, ...]  # a unique ordering: keyset paging
    scope: str = OF_ACCOUNT
    json_columns: frozenset[str] = frozenset()
    #: restored columns the archive cannot hold (secrets): SQL expressions that make them unusable
    placeholders: dict[str, str] = field(default_factory=dict)
    restore_account: bool = True  # the table has an account_id column, restored from the header
    sequence: str | None = None  # the id sequence to move past the restored ids
    by_domain: bool = False  # read through the table's domain index (its key starts with domain_id)
    #: a suppression list's value ("address" or "value"), kept sealed with a keyed hash beside it
    #: (envoi.suppression.sealed_address): exported opened (null once its person was erased) and with
    #: its hash in hex, so a restored entry still suppresses; sealed again on restore.
    sealed: str | None = None

    @property
    def select(self) -> str:
        return ", ".join(self._selected(c) for c in self.columns)

    def _selected(self, column: str) -> str:
        if self.sealed and column == self.sealed:
            return f"{column}_sealed AS {column}"
        if self.sealed and column == f"{self.sealed}_hash":
            return f"encode({column}, 'hex') AS {column}"
        return column

    def key_value(self, column: str, value):
        """A row's key value as the database compares it (keyset paging)."""
        return bytes.fromhex(value) if self.sealed and column == f"{self.sealed}_hash" else value

    def exported(self, row: dict, vault: AddressVault) -> dict:
        """A row as the archive holds it."""
        if self.sealed:
            row = {**row, self.sealed: vault.open(self.table, row["domain_id"], row[self.sealed])}
        return row

    def stored(self, row: dict, vault: AddressVault) -> dict:
        """An archive row as the database holds it (names and values)."""
        if not self.sealed:
            return row
        value, hashed = row[self.sealed], f"{self.sealed}_hash"
        out = {k: v for k, v in row.items() if k != self.sealed}
        out[f"{self.sealed}_sealed"] = vault.seal(self.table, row["domain_id"], value) if value else None
        out[hashed] = bytes.fromhex(row[hashed])
        return out


SECTIONS: tuple[Section, ...] = (
    Section("account", "accounts",
            ("id", "name", "region", "plan", "state", "state_reason", "state_changed_at", "closed_at",
             "billing_status", "pending_plan", "billing_period_start", "billing_period_end",
             "last_active_on", "inactivity_warned_at", "disabled_at", "monthly_limit", "created_at"),
            ("id",), scope="id = %(account)s", restore_account=False, sequence="accounts_id_seq"),
    Section("domain", "domains",
            ("id", "name", "state", "type", "dkim_selector", "dkim_public_key", "dkim_key_size", "spam_action",
             "wildcard", "web_prefix", "web_scheme", "require_tls", "skip_verification", "message_ttl",
             "dkim_ed25519_selector", "dkim_ed25519_public_key", "dkim_rotated_at", "dkim_rotation_enabled",
             "dkim_rotation_interval", "created_at"),
            ("id",), placeholders={"dkim_private_key": "'\\x'::bytea"}, sequence="domains_id_seq"),
    Section("dkim_key", "dkim_keys",  # private keys are not exported: restored keys cannot sign
            ("id", "domain_id", "signing_domain", "selector", "algorithm", "bits", "public_key", "state",
             "retiring_since", "created_at"), ("id",), scope=_OF_DOMAINS, restore_account=False,
            sequence="dkim_keys_id_seq"),
    Section("user", "users", ("id", "email", "role", "created_at"), ("id",),
            placeholders={"password_hash": "'!restored: reset the password'"}, sequence="users_id_seq"),
    Section("invitation", "user_invitations",
            ("id", "email", "role", "invited_by", "created_at", "expires_at", "accepted_at"), ("id",),
            placeholders={"token_hash": "sha256(gen_random_uuid()::text::bytea)"}, sequence="user_invitations_id_seq"),
    Section("api_key", "api_keys",
            ("id", "domain_id", "role", "description", "hint", "is_disabled", "expires_at", "created_at"), ("id",),
            placeholders={"secret_hash": "sha256(gen_random_uuid()::text::bytea)"}),
    Section("smtp_credential", "smtp_credentials", ("id", "domain_id", "login", "created_at"), ("id",),
            scope=_OF_DOMAINS, placeholders={"password_hash": "'!restored: set a new password'"},
            restore_account=False, sequence="smtp_credentials_id_seq"),
    Section("authorized_recipient", "authorized_recipients", ("address", "created_at"), ("address",)),
    Section("tracking_settings", "tracking_settings",
            ("domain_id", "open", "click", "unsubscribe", "html_footer", "text_footer", "updated_at"),
            ("domain_id",), scope=_OF_DOMAINS, restore_account=False),
    # An account-level webhook has no domain_id and a hook_id. url: its password masked (user:***@)
    Section("webhook", "webhooks", ("id", "domain_id", "hook_id", "description", "event_type", "url", "endpoint",
                                    "created_at"), ("id",), sequence="webhooks_id_seq"),
    Section("bounce", "suppress_bounces", ("domain_id", "address", "address_hash", "code", "error", "created_at"),
            ("domain_id", "address_hash"), scope=_OF_DOMAINS, restore_account=False, sealed="address"),
    Section("unsubscribe", "suppress_unsubscribes", ("domain_id", "address", "address_hash", "tags", "created_at"),
            ("domain_id", "address_hash"), scope=_OF_DOMAINS, restore_account=False, sealed="address"),
    Section("complaint", "suppress_complaints", ("domain_id", "address", "address_hash", "created_at"),
            ("domain_id", "address_hash"), scope=_OF_DOMAINS, restore_account=False, sealed="address"),
    Section("allowlist", "suppress_whitelists", ("domain_id", "value", "value_hash", "type", "reason", "created_at"),
            ("domain_id", "value_hash"), scope=_OF_DOMAINS, restore_account=False, sealed="value"),
    Section("mailing_list", "mailing_lists",
            ("id", "domain_id", "address", "name", "description", "access_level", "reply_preference", "created_at"),
            ("id",), sequence="mailing_lists_id_seq"),
    Section("mailing_list_member", "mailing_list_members",
            ("list_id", "address", "name", "vars", "subscribed", "created_at"), ("list_id", "address"),
            json_columns=frozenset({"vars"})),
    Section("message", "messages",
            ("id", "domain_id", "message_id", "storage_key", "mail_from", "headers", "tags", "user_variables",
             "options", "attachments", "method", "size", "dkim_signature", "created_at", "body_expires_at"),
            ("id",), json_columns=frozenset({"headers", "user_variables", "options", "attachments"}),
            sequence="messages_id_seq"),
    Section("recipient", "recipients",
            ("id", "message_pk", "domain_id", "address", "rcpt_domain", "status", "attempts", "next_attempt_at",
             "expires_at", "last_code", "last_message", "updated_at"), ("id",), sequence="recipients_id_seq"),
    Section("bounce_report", "bounce_reports", ("recipient_id", "kind", "created_at"), ("recipient_id", "kind"),
            scope="recipient_id IN (SELECT id FROM recipients WHERE account_id = %(account)s)",
            restore_account=False),
    Section("event", "events",
            ("id", "event_id", "domain_id", "message_pk", "event", "severity", "recipient", "message_id", "ts",
             "data", "sender", "subject", "tags"), ("domain_id", "ts", "id"), json_columns=frozenset({"data"}),
            sequence="events_id_seq", by_domain=True),  # events_domain_ts: the partitions have no index on id
    Section("stats_hourly", "event_stats_hourly",
            ("domain_id", "tag", "hour", "event", "severity", "reason", "method", "count"),
            ("domain_id", "tag", "hour", "event", "severity", "reason", "method")),
    Section("tag", "event_tags", ("domain_id", "tag", "description", "first_seen", "last_seen"), ("domain_id", "tag")),
    Section("webhook_delivery", "webhook_deliveries",
            ("id", "domain_id", "event_type", "url", "endpoint", "event_id", "payload", "status", "attempts",
             "next_attempt_at", "last_status", "created_at", "finished_at"), ("id",),
            json_columns=frozenset({"payload"}), sequence="webhook_deliveries_id_seq"),
    Section("webhook_attempt", "webhook_attempts",
            ("id", "delivery_id", "domain_id", "attempt_no", "status_code", "error", "latency_ms", "response",
             "outcome", "attempted_at"), ("id",), scope=_OF_DELIVERIES, restore_account=False,
            sequence="webhook_attempts_id_seq"),
    Section("route", "routes", ("id", "priority", "description", "expression", "actions", "created_at"), ("id",),
            json_columns=frozenset({"actions"})),
    Section("inbound_message", "inbound_messages",  # the received message itself (raw) is not archived
            ("id", "domain_id", "storage_key", "recipient", "sender", "stored", "received_at", "expires_at"), ("id",),
            sequence="inbound_messages_id_seq"),
    Section("inbound_post", "inbound_posts",
            ("id", "message_id", "kind", "target", "status", "attempts", "last_status", "last_error",
             "next_attempt_at", "created_at"), ("id",), sequence="inbound_posts_id_seq"),
    Section("billing_overage", "billing_overage_pushes",
            ("idempotency_key", "period_start", "cumulative_units", "units", "amount", "stripe_item_id",
             "created_at"), ("idempotency_key",)),
    Section("template", "templates", ("id", "domain_id", "name", "description", "created_by", "created_at"), ("id",),
            sequence="templates_id_seq"),
    Section("template_version", "template_versions",
            ("id", "template_id", "tag", "engine", "template", "comment", "headers", "active", "created_at"), ("id",),
            json_columns=frozenset({"headers"}), sequence="template_versions_id_seq"),
    Section("validation_job", "validation_jobs",
            ("id", "list_id", "status", "quantity", "records_processed", "created_at", "updated_at", "expires_at"),
            ("id",), sequence="validation_jobs_id_seq"),
    Section("validation_item", "validation_items", ("job_id", "position", "address", "result"),
            ("job_id", "position"), json_columns=frozenset({"result"})),
    Section("audit", "audit_log", ("id", "at", "actor", "action", "target", "ip", "details"), ("id",),
            json_columns=frozenset({"details"}), sequence="audit_log_id_seq"),
)
BY_KIND = {section.kind: section for section in SECTIONS}


def count_rows(db: Database, account_id: int) -> dict[str, int]:
    """Rows per section: the progress bar's total, and what the trailer must say."""
    with db.transaction() as conn:
        return {s.kind: conn.execute(f"SELECT count(*) AS n FROM {s.table} WHERE {s.scope}",
                                     {"account": account_id}).fetchone()["n"] for s in SECTIONS}


def export_lines(db: Database, account_id: int, vault: AddressVault, *, batch: int = BATCH,
                 now: Callable[[], float] = time.time) -> Iterator[str]:
    """The archive's lines. The caller checks the account exists (an unknown one yields the header and an
    empty trailer)."""
    with db.transaction() as conn:
        region = conn.execute("SELECT region FROM accounts WHERE id = %s", (account_id,)).fetchone()
    yield _line("export", {"format": FORMAT, "version": VERSION, "account_id": account_id,
                           "region": region["region"] if region else None, "exported_at": now(),
                           "note": "the account's data without secrets or message bodies"})
    counts: dict[str, int] = {}
    for section in SECTIONS:
        counts[section.kind] = 0
        for row in section_rows(db, section, account_id, batch=batch):
            counts[section.kind] += 1
            yield _line(section.kind, section.exported(row, vault))
    yield _line("end", {"counts": counts})


def section_rows(db: Database, section: Section, account_id: int, *, batch: int = BATCH) -> Iterator[dict]:
    """A section's rows in key order, read `batch` at a time (keyset paging, one transaction each)."""
    if not section.by_domain:
        yield from _paged(db, section, section.scope, {"account": account_id}, batch)
        return
    # The table is indexed by domain only: the account's domains through that index first, then whatever
    # the account holds under a domain it removed earlier (usually nothing).
    with db.transaction() as conn:
        domain_ids = [r["id"] for r in conn.execute("SELECT id FROM domains WHERE account_id = %s ORDER BY id",
                                                    (account_id,)).fetchall()]
    params = {"account": account_id, "domain_ids": domain_ids}
    yield from _paged(db, section, f"domain_id = ANY(%(domain_ids)s) AND {section.scope}", params, batch)
    yield from _paged(db, section, f"NOT (domain_id = ANY(%(domain_ids)s)) AND {section.scope}", params, batch)


def _paged(db: Database, section: Section, scope: str, params: dict, batch: int) -> Iterator[dict]:
    keys = ", ".join(section.key)
    after: tuple | None = None
    while True:
        where, args = scope, dict(params)
        if after is not None:
            marks = ", ".join(f"%(k{i})s" for i in range(len(after)))
            where += f" AND ({keys}) > ({marks})"
            args.update({f"k{i}": value for i, value in enumerate(after)})
        with db.transaction() as conn:
            rows = conn.execute(f"SELECT {section.select} FROM {section.table} WHERE {where}"
                                f" ORDER BY {keys} LIMIT {int(batch)}", args).fetchall()
        yield from rows
        if len(rows) < batch:
            return
        last = rows[-1]
        after = tuple(section.key_value(k, last[k]) for k in section.key)


def import_archive(db: Database, lines: Iterable[str], region: str, vault: AddressVault, *, batch: int = BATCH,
                   progress: Callable[[int], None] = lambda n: None) -> dict:
    """Restore an archive into this region's database, in one transaction (all or nothing). Refuses an
    archive of another region, of an account that exists here, or one that is cut short or altered
    (ArchiveInvalid). Returns the header with the restored rows per section."""
    rows_in = iter(lines)
    header = _parse(next(rows_in, ""), 1)
    if header["type"] != "export" or header["data"].get("format") != FORMAT:
        raise ArchiveInvalid("not an Envoi account archive (its first line is not the export header)")
    if header["data"].get("version") != VERSION:
        raise ArchiveInvalid(f"archive version {header['data'].get('version')} is not supported")
    account_id = header["data"]["account_id"]
    if header["data"]["region"] != region:
        raise ArchiveInvalid(f"this archive is of the {header['data']['region']} region; this is {region}:"
                             " an account is restored only in its own region")
    restored = {section.kind: 0 for section in SECTIONS}
    with db.transaction() as conn:
        if conn.execute("SELECT 1 FROM accounts WHERE id = %s", (account_id,)).fetchone():
            raise ArchiveInvalid(f"account {account_id} already exists here")
        pending: list[dict] = []
        current: Section | None = None
        trailer = None
        for number, text in enumerate(rows_in, start=2):
            if trailer is not None:
                raise ArchiveInvalid(f"line {number}: data after the archive's end")
            line = _parse(text, number)
            if line["type"] == "end":
                trailer = line["data"]
                continue
            section = BY_KIND.get(line["type"])
            if section is None:
                raise ArchiveInvalid(f"line {number}: unknown section {line['type']!r}")
            if section is not current or len(pending) >= batch:
                _insert(conn, current, pending, account_id, vault)
                progress(len(pending))
                pending, current = [], section
            pending.append(line["data"])
            restored[section.kind] += 1
        _insert(conn, current, pending, account_id, vault)
        progress(len(pending))
        if trailer is None:
            raise ArchiveInvalid("the archive is cut short (no end line): nothing was restored")
        if trailer.get("counts") != restored:
            raise ArchiveInvalid("the archive's rows do not match its end line: nothing was restored")
        if restored["account"] != 1:
            raise ArchiveInvalid("the archive holds no account: nothing was restored")
        for section in SECTIONS:
            if section.sequence:  # new rows made here later must not collide with the restored ids
                conn.execute(f"SELECT setval('{section.sequence}', greatest((SELECT max(id) FROM {section.table}),"
                             f" (SELECT last_value FROM {section.sequence})))")
    return {**header["data"], "restored": restored}


def _insert(conn: Connection, section: Section | None, rows: list[dict], account_id: int,
            vault: AddressVault) -> None:
    if section is None or not rows:
        return
    for row in rows:
        if section.kind == "account" and row.get("id") != account_id:
            raise ArchiveInvalid("the archive's account row is not the account its header names")
        if set(row) != set(section.columns):
            raise ArchiveInvalid(f"a {section.kind} row has columns {sorted(row)}, expected {sorted(section.columns)}")
    try:
        rows = [section.stored(row, vault) for row in rows]
    except (ValueError, TypeError, KeyError) as ex:
        raise ArchiveInvalid(f"a {section.kind} row holds a value this region cannot restore") from ex
    columns = list(rows[0])
    names = columns + list(section.placeholders) + (["account_id"] if section.restore_account else [])
    marks = ([f"%({c})s" for c in columns] + list(section.placeholders.values())
             + (["%(account_id)s"] if section.restore_account else []))
    sql = f"INSERT INTO {section.table} ({', '.join(names)}) VALUES ({', '.join(marks)})"
    values = [{**{c: (Jsonb(row[c]) if c in section.json_columns else row[c]) for c in columns},
               "account_id": account_id} for row in rows]
    try:
        with conn.cursor() as cur:
            cur.executemany(sql, values)
    except Exception as ex:  # an id, a domain name or a login already used here: nothing is restored
        if not is_data_error(ex):
            raise
        raise ArchiveInvalid(f"the archive's {section.kind} rows do not fit this database (an id, name or login"
                             " already in use, or a row whose parent is missing): nothing was restored", detail=str(ex)) from ex


def _parse(text: str, number: int) -> dict:
    try:
        line = json.loads(text)
    except ValueError as ex:
        raise ArchiveInvalid(f"line {number} is not JSON") from ex
    if not isinstance(line, dict) or not isinstance(line.get("type"), str) or not isinstance(line.get("data"), dict):
        raise ArchiveInvalid(f"line {number} is not an archive line")
    return line


def _line(kind: str, data: dict) -> str:
    return json.dumps({"type": kind, "data": data}, default=_plain, ensure_ascii=False) + "\n"


def _plain(value):
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return f"{value.total_seconds()} seconds"  # an interval Postgres reads back
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | memoryview):
        raise TypeError("binary column in the archive")  # bodies and secrets are never exported
    return str(value)
