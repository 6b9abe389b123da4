"""Accounts, sending domains (with DKIM keys and DNS records), API keys and SMTP credentials."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from envoi.accounts import dnscheck, store
from envoi.accounts.audit import Audit
from envoi.accounts.errors import (
    AccountClosed,
    AccountDisabled,
    AccountRestricted,
    AccountSuspended,
    AlreadyExists,
    Forbidden,
    InvalidInput,
    NotFound,
)
from envoi.accounts.limits import DOMAINS, PlanLimits, enforce
from envoi.infra import crypto, dkim_keys, ids
from envoi.infra.cache import TTLCache
from envoi.infra.db import Connection, Database, IntegrityError
from envoi.infra.redis import Generation

DOMAIN_RE = re.compile(r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))+$")
KEY_RE = re.compile(r"^key-(eu|us)-[A-Za-z0-9_-]{20,}$")
ROLES = ("admin", "developer", "sending", "basic", "operator")  # what each may do: envoi/api/roles.py
ADDRESS_RE = re.compile(r"^[^@\s]{1,64}@[a-z0-9-]+(\.[a-z0-9-]+)+$")
MAX_AUTHORIZED_RECIPIENTS = 5  # Mailgun's limit
MAX_KEY_LIFETIME = 10 * 365 * 86400  # seconds; beyond this `expiration` is surely a mistake
ACCOUNT_STATES = ("active", "suspended", "restricted", "closed")
DOMAIN_STATES = ("active", "unverified", "disabled")
SPAM_ACTIONS = ("disabled", "block", "tag")
WEB_SCHEMES = ("http", "https")
WEB_PREFIX_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")  # one DNS label: <web_prefix>.<domain>
DNS_CHECKER = "dns-check"  # the audit log's actor for what a DNS check found
MAX_REASON = 500


@dataclass(frozen=True)
class Principal:
    """Who is calling: resolved from an API key or SMTP credential."""

    key_id: str | None
    account_id: int | None
    role: str  # one of ROLES
    domain: str | None = None  # set for domain sending keys and SMTP logins
    account_state: str = "active"  # as read with the key or login (see Accounts.refresh)
    plan: str | None = None  # the account's plan (envoi.billing), read and kept current with the state
    monthly_limit: int | None = None  # Mailgun's custom monthly sending limit, kept current with the plan
    acting_for_parent: int | None = None  # set when a parent's key acts for this subaccount (On-Behalf-Of)

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"

    def may_send_as(self, domain: str) -> bool:
        return self.role in ("admin", "developer", "sending") and (self.domain is None or self.domain == domain)


def key_region(secret: str) -> str | None:
    """The region a key was issued in, read from its prefix (keys are region-bound)."""
    match = KEY_RE.match(secret)
    return match.group(1) if match else None


class Accounts:
    def __init__(self, db: Database, sealer: crypto.Sealer, region: str, key_revocations: Generation,
                 audit: Audit, limits: PlanLimits | None = None):
        self.db = db
        self.limits = limits  # plans' max_domains, with billing on (envoi.accounts.limits)
        self.audit = audit  # key creation and revocation are account actions
        self.sealer = sealer
        self.region = region
        # Bumped when keys are revoked and when an account changes state: either way every process's
        # cached principals and account states are stale at once (see authenticate_key).
        self.key_revocations = key_revocations
        # PERF: the sending domain is read for every accepted message; changes made in this process
        # (delete, state) drop the entry at once, other processes see them within the TTL.
        self._sending_domains = TTLCache(ttl=5.0)
        # PERF: the API key is checked on every request (a Postgres round trip was ~10% of a send's
        # CPU). Only valid keys are kept, filed under the revocation generation they were read in:
        # revoking a key bumps it, so every process reads Postgres again on its next request (a
        # revocation takes effect at once everywhere). Expiry takes effect within 3 s.
        self._keys = TTLCache(ttl=3.0)
        self._states = TTLCache(ttl=3.0)  # account id -> (state, plan, limit), filed under the same generation
        self._subaccounts = TTLCache(ttl=3.0)  # (parent, subaccount) -> its state, for On-Behalf-Of
        # PERF: (stored hash, keyed digest of a password) pairs argon2 found matching (_password_matches).
        self._matched = TTLCache(ttl=3600.0)
        self._password_key = secrets.token_bytes(32)  # per process: the digests are worthless elsewhere
        self._verifying: dict[tuple[str, bytes], threading.Event] = {}  # pairs argon2 is checking now
        self._verifying_lock = threading.Lock()

    def sending_domain(self, name: str, account_id: int) -> dict | None:
        """get_domain() for the send path, cached briefly; None if the account has no such domain
        (intake says so in its own words)."""
        return self._sending_domains.get((name.lower(), account_id), lambda: self._find_domain(name, account_id))

    def _find_domain(self, name: str, account_id: int) -> dict | None:
        with self.db.transaction() as conn:
            row = store.get_domain(conn, name, account_id)
            if row is not None and row["state"] == "unverified":
                # What intake needs to hold an unverified domain to its test recipients, cached with
                # the row: no extra query per message.
                row["authorized_recipients"] = frozenset(
                    r["address"] for r in store.authorized_recipients(conn, account_id))
            return row

    # accounts ---------------------------------------------------------------------------------
    def create_account(self, name: str, plan: str = "free") -> dict:
        with self.db.transaction() as conn:
            return store.insert_account(conn, name, self.region, plan)

    def list_accounts(self, state: str | None = None, *, limit: int | None = None, skip: int = 0,
                      search: str | None = None, newest_first: bool = False) -> list[dict]:
        """Every account of the region (or those in `state`; or whose name starts with `search`, or whose
        id it is), oldest first unless `newest_first`, with its state, state_reason, state_changed_at,
        closed_at and the counts an operator page shows: domains, users, accepted_30d (recipients
        accepted in the last 30 days)."""
        if state is not None and state not in ACCOUNT_STATES:
            raise InvalidInput(f"state must be one of {', '.join(ACCOUNT_STATES)}")
        with self.db.transaction() as conn:
            return store.list_accounts(conn, state, limit, skip, search=search, newest_first=newest_first)

    def count_accounts(self, state: str | None = None, *, search: str | None = None) -> int:
        with self.db.transaction() as conn:
            return store.count_accounts(conn, state, search=search)

    # account state ----------------------------------------------------------------------------
    # Suspending, reinstating and closing take effect at once in every process: the change bumps the
    # generation that cached principals and account states are filed under (authenticate_key), so no
    # send pays a Postgres round trip to learn it. Mail already queued is left to the relay (as Mailgun
    # leaves what a disabled domain had accepted); the API's DELETE /v3/{domain}/envelopes clears it.
    def suspend(self, account_id: int, reason: str, *, actor: str = "cli", ip: str | None = None) -> dict:
        """Stop the account sending (API and SMTP refuse with AccountSuspended); its keys still read and
        its users still sign in, to see `reason`. Suspending again replaces the reason. Returns the row."""
        reason = " ".join((reason or "").split())
        if not 0 < len(reason) <= MAX_REASON:
            raise InvalidInput(f"a suspension needs a reason (at most {MAX_REASON} characters)")
        return self._change_state(account_id, "suspended", reason, "account.suspended", actor, ip)

    def reinstate(self, account_id: int, *, actor: str = "cli", ip: str | None = None) -> dict:
        """Let a suspended account send again. A closed account cannot be reinstated."""
        return self._change_state(account_id, "active", "", "account.reinstated", actor, ip)

    def restrict(self, account_id: int, reason: str, *, actor: str = "cli", ip: str | None = None) -> dict:
        """Restrict processing at the customer's request (GDPR Art. 18): nothing sent, accepted or tracked
        (AccountRestricted), users still sign in and export; the data is kept. Lifted by an operator
        (lift_restriction). A suspended account becomes restricted (the restriction is the stronger)."""
        reason = " ".join((reason or "").split())
        if not 0 < len(reason) <= MAX_REASON:
            raise InvalidInput(f"a restriction needs a reason (at most {MAX_REASON} characters)")
        return self._change_state(account_id, "restricted", reason, "account.restricted", actor, ip)

    def lift_restriction(self, account_id: int, *, actor: str = "cli", ip: str | None = None) -> dict:
        """An operator lifts the restriction: the account is active again."""
        if self.get_account(account_id)["state"] != "restricted":
            raise InvalidInput(f"Account {account_id} is not restricted")
        return self._change_state(account_id, "active", "", "account.restriction_lifted", actor, ip)

    def close(self, account_id: int, *, actor: str = "cli", ip: str | None = None) -> dict:
        """The customer deleted the account: from now its API keys are unknown (401), its SMTP logins fail,
        its users cannot sign in and their sessions end. Final. closed_at is recorded; the account's data is
        purged ENVOI_ACCOUNT_PURGE_DELAY later (envoi.privacy.purge)."""
        return self._change_state(account_id, "closed", "", "account.closed", actor, ip)

    def _change_state(self, account_id: int, state: str, reason: str, action: str, actor: str,
                      ip: str | None) -> dict:
        with self.db.transaction() as conn:
            before = store.set_account_state(conn, account_id, state, reason)
            if before is None:
                raise NotFound(f"Account not found: {account_id}")
            if before["state"] == "closed":
                raise InvalidInput(f"Account {account_id} is closed")
            if state == "active" and before["state"] == "active":
                raise InvalidInput(f"Account {account_id} is not suspended")
            if before["state"] == "restricted" and action not in ("account.restriction_lifted", "account.closed",
                                                                  "account.restricted"):
                # the customer's request outranks a suspension or its end: only an operator's lift ends it
                raise InvalidInput(f"Account {account_id} is restricted: only lifting the restriction changes that")
            if state == "closed":
                store.end_account_sessions(conn, account_id)
            self.audit.record(account_id, actor, action, str(account_id), ip=ip, conn=conn,
                              details={"from": before["state"], "to": state, **({"reason": reason} if reason else {})})
            row = store.get_account(conn, account_id)
        self._keys_changed()  # every process: cached principals and states are stale now
        self._sending_domains.forget()
        return row

    def account_state(self, account_id: int) -> str:
        """The account's state ('active', 'suspended', 'closed'; a missing account reads as closed),
        cached under the generation a state change bumps: current in every process, with no Postgres
        round trip while it holds."""
        return self._state_and_plan(account_id)[0]

    def _state_and_plan(self, account_id: int) -> tuple[str, str | None, int | None]:
        """(state as sending sees it, plan, custom monthly limit), cached under the key generation."""
        generation = self.key_revocations.current()
        if generation is None:  # Redis cannot say: trust only Postgres
            return self._read_state(account_id)
        return self._states.get((generation, account_id), lambda: self._read_state(account_id))

    def _read_state(self, account_id: int) -> tuple[str, str | None, int | None]:
        with self.db.transaction() as conn:
            row = store.account_state(conn, account_id)
        return (row["state"], row["plan"], row["monthly_limit"]) if row else ("closed", None, None)

    def refresh(self, principal: Principal) -> Principal:
        """The principal with its account's current state, plan and limit (a long SMTP session's login
        was read once)."""
        if principal.account_id is None:
            return principal
        state, plan, limit = self._state_and_plan(principal.account_id)
        if state == principal.account_state and plan == principal.plan and limit == principal.monthly_limit:
            return principal
        return replace(principal, account_state=state, plan=plan, monthly_limit=limit)

    def act_for(self, principal: Principal, subaccount_id: str) -> Principal:
        """A parent's key acting for one of its own subaccounts (X-Mailgun-On-Behalf-Of): the subaccount's
        principal with the key's role. Anything else (another account's subaccount, no such account, a
        subaccount acting up, a domain key) is Forbidden, in the same words. Cached like a key."""
        if principal.account_id is None or principal.domain is not None or not subaccount_id.isdigit():
            raise Forbidden("Forbidden")
        sub_id, parent_id = int(subaccount_id), principal.account_id
        generation = self.key_revocations.current()
        if generation is None:
            found = self._find_subaccount(parent_id, sub_id)
        else:
            found = self._subaccounts.get((generation, parent_id, sub_id),
                                          lambda: self._find_subaccount(parent_id, sub_id))
        if found is None:
            raise Forbidden("Forbidden")
        state, plan, limit = found
        return replace(principal, account_id=sub_id, account_state=state, plan=plan, monthly_limit=limit,
                       acting_for_parent=parent_id)

    def _find_subaccount(self, parent_id: int, sub_id: int) -> tuple[str, str | None, int | None] | None:
        with self.db.transaction() as conn:
            row = store.subaccount(conn, parent_id, sub_id)
        if row is None or row["state"] == "closed":
            return None
        return row["sending_state"], row["plan"], row["monthly_limit"]

    def principal_of_user(self, account_id: int) -> Principal:
        """A dashboard user acting for their account (resending a stored message): the account's rights
        of a developer key, with its current state and plan, so a suspended account cannot send this way
        either and a capped one is counted."""
        state, plan, limit = self._state_and_plan(account_id)
        return Principal(None, account_id, "developer", account_state=state, plan=plan, monthly_limit=limit)

    # account plan -----------------------------------------------------------------------------
    def set_plan(self, account_id: int, plan: str, *, actor: str = "cli", ip: str | None = None) -> dict:
        """Move the account to `plan` (a name the caller checked against the plans file): audited, and
        in force at once in every process (the generation cached principals are filed under is bumped,
        as for a state change). Returns the account row."""
        with self.db.transaction() as conn:
            before = store.set_account_plan(conn, account_id, plan)
            if before is None:
                raise NotFound(f"Account not found: {account_id}")
            self.audit.record(account_id, actor, "account.plan", str(account_id), ip=ip, conn=conn,
                              details={"from": before["plan"], "to": plan})
            row = store.get_account(conn, account_id)
        self._keys_changed()
        return row

    @staticmethod
    def ensure_may_send(principal: Principal, domain_name: str) -> None:
        """Refuse a send from a suspended or closed account (in Mailgun's words for a domain that may not
        send). Reads only the principal: authenticate_key and refresh keep its state current."""
        if principal.account_state == "suspended":
            raise AccountSuspended(f"Domain {domain_name} is not allowed to send: the account is suspended;"
                                   " its users can see why in the dashboard")
        if principal.account_state == "restricted":
            raise AccountRestricted(f"Domain {domain_name} is not allowed to send: processing of the account's"
                                    " data is restricted at its owner's request")
        if principal.account_state == "closed":
            raise AccountClosed()
        if principal.account_state == "disabled":
            raise AccountDisabled(f"Domain {domain_name} is not allowed to send: the subaccount is disabled")

    def get_account(self, account_id: int) -> dict:
        with self.db.transaction() as conn:
            row = store.get_account(conn, account_id)
        if not row:
            raise NotFound(f"Account not found: {account_id}")
        return row

    # domains ----------------------------------------------------------------------------------
    def add_domain(
        self,
        account_id: int,
        name: str,
        *,
        dkim_selector: str | None = None,
        dkim_key_size: int = 2048,
        spam_action: str = "disabled",
        wildcard: bool = False,
        web_prefix: str = "email",
        web_scheme: str = "http",
        require_tls: bool = False,
        skip_verification: bool = False,
        verified: bool = False,
    ) -> dict:
        """Add a sending domain. It starts unverified (it sends only to the account's authorised
        recipients) until verify_domain() finds its records in DNS. verified=True is for the operator
        vouching for a domain (`envoi domains add --verified`, `envoi up`'s local demo domain); the
        HTTP API never passes it."""
        name = name.strip().lower().rstrip(".")
        if not DOMAIN_RE.match(name):
            raise InvalidInput(f"'{name}' is not a valid domain name")
        if dkim_key_size not in dkim_keys.RSA_KEY_SIZES:
            raise InvalidInput("dkim_key_size must be 1024, 2048 or 4096")
        _check_domain_settings(spam_action=spam_action, web_scheme=web_scheme, web_prefix=web_prefix)
        selector = dkim_selector or "envoi"
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}", selector):
            raise InvalidInput("dkim_selector is not valid")
        private_pem, public_b64 = dkim_keys.generate_rsa(dkim_key_size)
        try:
            with self.db.transaction() as conn:
                self._account(conn, account_id)
                if store.active_elsewhere(conn, name, account_id):
                    raise AlreadyExists(f"Domain {name} already exists")
                enforce(conn, self.limits, account_id, DOMAINS)
                return store.insert_domain(
                    conn,
                    account_id=account_id,
                    name=name,
                    state="active" if verified else "unverified",
                    dkim_selector=selector,
                    dkim_private_key=dkim_keys.seal_rsa(self.sealer, name, private_pem),
                    dkim_public_key=public_b64,
                    dkim_key_size=dkim_key_size,
                    spam_action=spam_action,
                    wildcard=wildcard,
                    web_prefix=web_prefix,
                    web_scheme=web_scheme,
                    require_tls=require_tls,
                    skip_verification=skip_verification,
                )
        except IntegrityError as ex:
            raise AlreadyExists(f"Domain {name} already exists") from ex

    def get_domain(self, name: str, account_id: int | None = None) -> dict:
        with self.db.transaction() as conn:
            row = store.get_domain(conn, name, account_id)
        if not row:
            raise NotFound(f"Domain not found: {name}")
        return row

    def get_domain_by_id(self, domain_id: int) -> dict:
        with self.db.transaction() as conn:
            row = store.get_domain_by_id(conn, domain_id)
        if not row:
            raise NotFound(f"Domain not found: {domain_id}")
        return row

    def list_domains(self, account_id: int, state: str | None = None, limit: int = 100, skip: int = 0,
                     *, search: str | None = None, sort: str | None = None, include_subaccounts: bool = False):
        """(total, rows) of an account's domains; Mailgun's filters: state, search (a part of the name),
        sort (name, name:asc, name:desc; default newest first), include_subaccounts (its subaccounts'
        domains too)."""
        if state is not None and state not in DOMAIN_STATES:
            raise InvalidInput("state must be one of: active, unverified, disabled")
        if sort not in store.DOMAIN_ORDERS:
            raise InvalidInput("sort must be one of: name, name:asc, name:desc")
        with self.db.transaction() as conn:
            return store.list_domains(conn, account_id, state, limit, skip, search or None, sort,
                                      include_subaccounts)

    def update_domain(self, account_id: int, name: str, **changes) -> dict:
        """Change a domain's settings (Mailgun's PUT /v4/domains/{d}, /connection, /web_prefix): any of
        spam_action, wildcard, web_scheme, web_prefix, require_tls, skip_verification, and Envoi's
        ip_overflow (overflow | wait | default: the relay's ENVOI_WARMUP_POLICY); None = unchanged.
        All are checked before any is written. Returns the domain row."""
        allowed = {"spam_action", "wildcard", "web_scheme", "web_prefix", "require_tls", "skip_verification",
                   "ip_overflow"}
        unknown = set(changes) - allowed
        if unknown:
            raise InvalidInput(f"unknown domain setting: {sorted(unknown)[0]}")
        changes = {k: v for k, v in changes.items() if v is not None}
        if "web_prefix" in changes:
            changes["web_prefix"] = changes["web_prefix"].strip().lower()
        _check_domain_settings(**{k: changes[k] for k in ("spam_action", "web_scheme", "web_prefix", "ip_overflow")
                                  if k in changes})
        if changes.get("ip_overflow") == "default":
            changes["ip_overflow"] = None  # NULL: the relay's policy
        row = self.get_domain(name, account_id)
        with self.db.transaction() as conn:
            store.update_domain(conn, row["id"], changes)
        self._sending_domains.forget()  # the send path reads require_tls, skip_verification, web_*
        return self.get_domain_by_id(row["id"])

    def domain_records(self, row: dict, targets: dict) -> dict:
        """The records the domain must publish (dns_records), each with what the last DNS check found
        (`valid`, `cached`; "unknown" before any check). Receiving records only for a receiving domain."""
        with self.db.transaction() as conn:
            state = store.dns_state(conn, row["id"]) or {"dns_checks": {}, "receiving": False}
        records = dns_records(row, **targets, receiving=state["receiving"])
        for rec in records["sending_dns_records"] + records["receiving_dns_records"]:
            if found := state["dns_checks"].get(record_key(rec)):
                rec["valid"], rec["cached"] = found["valid"], found["cached"]
        return records

    def recheck_domains(self, targets: dict, nameserver: tuple[str, int] | None, every: float, *,
                        batch: int = 5, budget: float = 30.0) -> dict:
        """`envoi scheduler`'s periodic re-check: look up the records of the domains not checked for
        `every` seconds, longest first, as PUT .../verify does: a record that was valid and is now
        missing is recorded in the audit log (and a missing SPF or DKIM record makes the domain
        unverified); an unverified domain whose records appeared becomes active. Batches of `batch`
        until `budget` seconds are spent (lookups time out, and the scheduler's other tasks wait)."""
        counts = {"checked": 0, "broken": 0}
        started = time.monotonic()
        while True:
            with self.db.transaction() as conn:
                rows = store.claim_dns_rechecks(conn, every, batch)
            for row in rows:
                try:
                    after, _ = self.verify_domain(row["account_id"], row["name"], self.domain_records(row, targets),
                                                  nameserver)
                except (AlreadyExists, NotFound):  # verified elsewhere meanwhile, or deleted: nothing to do
                    continue
                counts["checked"] += 1
                counts["broken"] += row["state"] == "active" and after["state"] == "unverified"
            if len(rows) < batch or time.monotonic() - started >= budget:
                return counts

    def delete_domain(self, account_id: int, name: str) -> None:
        with self.db.transaction() as conn:
            row = store.get_domain(conn, name, account_id)
            if not row:
                raise NotFound(f"Domain not found: {name}")
            store.delete_domain(conn, row["id"])
        self._sending_domains.forget()
        self._keys_changed()  # its domain-scoped keys went with it

    def set_domain_state(self, domain_id: int, state: str) -> None:
        with self.db.transaction() as conn:
            store.set_domain_state(conn, domain_id, state)
        self._sending_domains.forget()

    def verify_domain(self, account_id: int | None, name: str, records: dict,
                      nameserver: tuple[str, int] | None = None, *, trust: bool = False) -> tuple[dict, dict]:
        """Look the domain's records up in DNS (Mailgun's PUT /v4/domains/{d}/verify); when its SPF and
        DKIM records are there, the domain becomes active and the same name held unverified by other
        accounts is released. What was found is kept (domain_records shows it). A record found valid
        before and missing now is broken: an audit entry `domain.dns_record_broken`, and when it is the
        SPF or DKIM record of an active domain, the domain is unverified again (as Mailgun does). A lookup
        without an answer ("unknown") breaks nothing. Returns (domain row, records with `valid`).

        records: dns_records(row, ...) for this row. account_id None: an operator, by name.
        trust: the operator vouches for the domain without a lookup (`envoi domains verify --trust`)."""
        row = self.get_domain(name, account_id)
        if trust:
            return self._activate(row), records
        checked = {key: dnscheck.check(rows, nameserver) for key, rows in records.items()}
        found = checked["sending_dns_records"] + checked["receiving_dns_records"]
        with self.db.transaction() as conn:
            before = (store.dns_state(conn, row["id"]) or {}).get("dns_checks") or {}
            broken = [r for r in found if not r.get("pending") and not r.get("retiring") and r["valid"] == "invalid"
                      and before.get(record_key(r), {}).get("valid") == "valid"]
            lost = any(_required(r) for r in broken) and store.unverify_domain(conn, row["id"])
            # No answer tells nothing: the last definite finding stands (a record that was valid, went
            # unanswered, then missing, is still a broken record).
            store.save_dns_checks(conn, row["id"], {
                record_key(r): before[record_key(r)] if r["valid"] == "unknown" and record_key(r) in before
                else {"valid": r["valid"], "cached": r["cached"]} for r in found})
            if broken:
                self.audit.record(row["account_id"], DNS_CHECKER, "domain.dns_record_broken", row["name"], conn=conn,
                                  details={"state": "unverified" if lost else row["state"],
                                           "records": [{k: r[k] for k in ("record_type", "name", "value")}
                                                       for r in broken]})
        if lost:
            self._sending_domains.forget()
            self._keys_changed()
            row = self.get_domain_by_id(row["id"])
        elif all(r["valid"] == "valid" for r in found if _required(r)):
            row = self._activate(row)
        return self._promote_dkim(row, checked), checked

    def _activate(self, row: dict) -> dict:
        """An unverified domain proven (or vouched for): active, the name released elsewhere."""
        if row["state"] != "unverified":
            return row
        try:
            with self.db.transaction() as conn:
                if store.active_elsewhere(conn, row["name"], row["account_id"]):
                    raise AlreadyExists(f"Domain {row['name']} is already verified by another account")
                store.activate_domain(conn, row["id"])
        except IntegrityError as ex:  # verified elsewhere at the same moment
            raise AlreadyExists(f"Domain {row['name']} is already verified by another account") from ex
        self._sending_domains.forget()
        self._keys_changed()
        return self.get_domain_by_id(row["id"])

    def rotate_dkim_key(self, account_id: int | None, name: str, key_size: int | None = None) -> dict:
        """Make the domain's next DKIM key, under a new selector, and keep it pending: the relay goes
        on signing with the current key until verify_domain() finds the new key's record in DNS, and
        switches then. Rotating again before that replaces the pending key. Returns the domain row."""
        row = self.get_domain(name, account_id)
        key_size = key_size or row["dkim_key_size"]
        if key_size not in dkim_keys.RSA_KEY_SIZES:
            raise InvalidInput("dkim_key_size must be 1024, 2048 or 4096")
        selector = f"envoi-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(2)}"  # never the current one
        private_pem, public_b64 = dkim_keys.generate_rsa(key_size)
        with self.db.transaction() as conn:
            store.set_pending_dkim(conn, row["id"], selector, dkim_keys.seal_rsa(self.sealer, row["name"], private_pem),
                                   public_b64, key_size)
        return self.get_domain_by_id(row["id"])

    def _promote_dkim(self, row: dict, checked: dict) -> dict:
        """verify_domain's part of a rotation: the pending key's record was found, so sign with it."""
        selector = row.get("dkim_pending_selector")
        pending = f"{selector}._domainkey.{row['name']}"
        if selector and any(r["name"] == pending and r["valid"] == "valid" for r in checked["sending_dns_records"]):
            with self.db.transaction() as conn:
                store.promote_pending_dkim(conn, row["id"], selector)
            self._sending_domains.forget()
            return self.get_domain_by_id(row["id"])
        return row

    # authorised recipients (what unverified domains may send to) -------------------------------
    def authorized_recipients(self, account_id: int) -> list[dict]:
        with self.db.transaction() as conn:
            return store.authorized_recipients(conn, account_id)

    def add_authorized_recipient(self, account_id: int, address: str) -> str:
        address = (address or "").strip().lower()
        if len(address) > 254 or not ADDRESS_RE.match(address):
            raise InvalidInput("email parameter is not a valid address")
        with self.db.transaction() as conn:
            self._account(conn, account_id)
            if not store.add_authorized_recipient(conn, account_id, address, MAX_AUTHORIZED_RECIPIENTS):
                raise InvalidInput(f"You can have at most {MAX_AUTHORIZED_RECIPIENTS} authorized recipients")
        self._sending_domains.forget()
        return address

    def delete_authorized_recipient(self, account_id: int, address: str) -> None:
        with self.db.transaction() as conn:
            if not store.delete_authorized_recipient(conn, account_id, (address or "").strip().lower()):
                raise NotFound("Authorized recipient not found")
        self._sending_domains.forget()

    def forget_domains(self) -> None:
        """A domain's signing setup changed (envoi.accounts.dkim): this process rereads its domains."""
        self._sending_domains.forget()

    def dkim_private_key(self, domain: dict) -> bytes:
        return dkim_keys.open_rsa(self.sealer, domain["name"], domain["dkim_private_key"])

    # API keys ---------------------------------------------------------------------------------
    def create_key(
        self,
        account_id: int | None,
        role: str = "admin",
        domain: str | None = None,
        description: str = "",
        expires_in: int | None = None,
        *,
        actor: str = "cli",
        ip: str | None = None,
    ) -> tuple[dict, str]:
        """Create a key; return (row, secret). The secret is shown once and stored only hashed.
        domain: the key acts on that domain only. expires_in: seconds until it stops working."""
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}")
        if (role == "operator") != (account_id is None):
            raise InvalidInput("operator keys belong to no account; customer keys need one")
        if role == "sending" and not domain:
            raise InvalidInput("a sending key needs a domain")
        if expires_in is not None and not 0 < expires_in <= MAX_KEY_LIFETIME:
            raise InvalidInput(f"expiration must be between 1 and {MAX_KEY_LIFETIME} seconds")
        secret = f"key-{self.region}-{ids.token(24)}"
        with self.db.transaction() as conn:
            domain_id = domain_name = None
            if account_id is not None:
                self._account(conn, account_id)
            if domain:
                row = store.get_domain(conn, domain, account_id)
                if not row:
                    raise NotFound(f"Domain not found: {domain}")
                domain_id, domain_name = row["id"], row["name"]
            key = store.insert_api_key(
                conn,
                id=ids.token(9),
                account_id=account_id,
                domain_id=domain_id,
                role=role,
                secret_hash=crypto.token_hash(secret),
                hint=secret[-4:],
                description=description,
                expires_at=None if expires_in is None else datetime.now(UTC) + timedelta(seconds=expires_in),
            )
            self.audit.record(account_id, actor, "key.create", key["id"], ip=ip,
                              details={"role": role, "domain": domain_name}, conn=conn)
        return {**key, "domain_name": domain_name}, secret

    def authenticate_key(self, secret: str) -> Principal | None:
        digest = crypto.token_hash(secret)
        # Read before the lookup: a key read under generation g and revoked meanwhile is filed under g,
        # which no later request asks for.
        generation = self.key_revocations.current()
        if generation is None:  # Redis cannot tell us about revocations: trust only Postgres
            return self._find_key(digest)
        return self._keys.get((generation, digest), lambda: self._find_key(digest),
                              keep=lambda found: found is not None)

    def plan_changed(self) -> None:
        """An account's plan was changed outside set_plan (billing): cached principals reread it."""
        self._keys_changed()

    def account_changed(self) -> None:
        """An account's sending state or limit changed (a subaccount disabled, a custom limit set): cached
        principals reread it, in every process."""
        self._keys_changed()

    def forget_account(self, account_id: int) -> None:
        """The account's rows were purged (envoi.privacy.purge): no process may keep a cached key, state or
        domain of it."""
        self._keys_changed()
        self._sending_domains.forget()

    def _keys_changed(self) -> None:
        """Keys were revoked (deleted, or their domain went) or an account changed state: every process
        rereads keys and states from Postgres on its next request."""
        self.key_revocations.bump()
        self._keys.forget()
        self._states.forget()
        self._subaccounts.forget()

    def _find_key(self, digest: str) -> Principal | None:
        with self.db.transaction() as conn:
            row = store.find_api_key(conn, digest)
        if not row:
            return None
        return Principal(row["id"], row["account_id"], row["role"], row["domain_name"], row["account_state"],
                         row["account_plan"], row["account_monthly_limit"])

    def list_keys(self, account_id: int | None) -> list[dict]:
        """An account's keys (None: the operator's); the rows hold only hashes of the secrets."""
        with self.db.transaction() as conn:
            return store.list_api_keys(conn, account_id)

    def delete_key(self, account_id: int | None, key_id: str, *, actor: str = "cli", ip: str | None = None) -> None:
        """Revoke a key of this account (None: any, for the operator); it stops working at once."""
        with self.db.transaction() as conn:
            deleted = store.delete_api_key(conn, account_id, key_id)
            if deleted is None:
                raise NotFound("Key not found")
            self.audit.record(deleted["account_id"], actor, "key.revoke", key_id, ip=ip,
                              details={"role": deleted["role"]}, conn=conn)
        self._keys_changed()

    # SMTP credentials -------------------------------------------------------------------------
    def create_credential(self, account_id: int, domain: str, login: str, password: str) -> dict:
        login = login.strip().lower()
        if "@" not in login:
            login = f"{login}@{domain}"
        if not login.endswith("@" + domain):
            raise InvalidInput(f"login must be an address at {domain}")
        if not 5 <= len(password) <= 32:
            raise InvalidInput("Password length must be between 5 and 32 characters")
        try:
            with self.db.transaction() as conn:
                row = store.get_domain(conn, domain, account_id)
                if not row:
                    raise NotFound(f"Domain not found: {domain}")
                return store.insert_credential(conn, row["id"], login, crypto.hash_password(password))
        except IntegrityError as ex:
            raise AlreadyExists(f"Credentials for {login} already exist") from ex

    def list_credentials(self, account_id: int, domain: str) -> list[dict]:
        with self.db.transaction() as conn:
            row = store.get_domain(conn, domain, account_id)
            if not row:
                raise NotFound(f"Domain not found: {domain}")
            return store.list_credentials(conn, row["id"])

    def change_credential_password(self, account_id: int, domain: str, login: str, password: str) -> None:
        if not 5 <= len(password) <= 32:
            raise InvalidInput("Password length must be between 5 and 32 characters")
        login = login if "@" in login else f"{login}@{domain}"
        with self.db.transaction() as conn:
            row = store.get_domain(conn, domain, account_id)
            if not row or not store.update_credential_password(
                conn, row["id"], login, crypto.hash_password(password)
            ):
                raise NotFound("Credentials not found")

    def delete_credential(self, account_id: int, domain: str, login: str) -> None:
        login = login if "@" in login else f"{login}@{domain}"
        with self.db.transaction() as conn:
            row = store.get_domain(conn, domain, account_id)
            if not row or not store.delete_credential(conn, row["id"], login):
                raise NotFound("Credentials not found")

    def authenticate_smtp(self, login: str, password: str) -> Principal | None:
        with self.db.transaction() as conn:
            row = store.find_credential(conn, login)
        # NOTE: a missing login still pays for one hash, so timing does not reveal which logins exist.
        if not row:
            crypto.verify_password(_DUMMY_HASH, password)
            return None
        if not self._password_matches(row["password_hash"], password):
            return None
        return Principal(None, row["account_id"], "sending", row["domain_name"], row["account_state"],
                         row["account_plan"], row["account_monthly_limit"])

    def _password_matches(self, stored: str, password: str) -> bool:
        """crypto.verify_password, remembered for a pair that matched. PERF: argon2 costs 50-180 ms of CPU,
        once per SMTP connection: a client connecting per message (or a pool reconnecting) paid it per
        message. A pure function of the stored hash and the password, so nothing goes stale: a changed
        password has a new hash, a deleted or released login no row (read above on every AUTH), an
        account's state comes with the row. Only matches are kept, for an existing login, so a wrong
        password or an unknown login still costs the same argon2 work every time (no timing oracle);
        the password is kept only as an HMAC under a key of this process. Checks of the same pair made
        at once wait for the first and share its match (a wrong password is still hashed by each)."""
        digest = hmac.new(self._password_key, password.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        key = (stored, digest)
        with self._verifying_lock:
            running = self._verifying.get(key)
            if running is None:
                self._verifying[key] = mine = threading.Event()
        if running is not None:
            # PERF: the same pair is being checked on another thread (a client's pool of connections logs
            # in at once: 20 sessions made 4 argon2 runs, one per worker, ~0.15 s of CPU each). Its match
            # is ours; if it did not match, this attempt pays its own argon2 as every wrong one does.
            running.wait()
            return self._matched.get(key, lambda: crypto.verify_password(stored, password),
                                     keep=lambda matched: matched)
        try:
            return self._matched.get(key, lambda: crypto.verify_password(stored, password),
                                     keep=lambda matched: matched)
        finally:
            with self._verifying_lock:
                del self._verifying[key]
            mine.set()

    @staticmethod
    def _account(conn: Connection, account_id: int) -> dict:
        row = store.get_account(conn, account_id)
        if not row:
            raise NotFound(f"Account not found: {account_id}")
        return row


_DUMMY_HASH = crypto.hash_password("not-a-real-password")


def dns_targets(settings) -> dict:
    """What this region's domains point their records at, from the operator's settings: dns_records()'
    keyword arguments, the one place they are made (the API, the dashboard, the CLI and the re-check
    show and check the same records). Nothing unset is made up: its record is not asked for."""
    return {"spf_include": settings.spf_include, "mx_hosts": tuple(settings.inbound_mx_hosts),
            "tracking_target": settings.tracking_host or _named_host(settings.public_url),
            "dmarc_rua": settings.dmarc_rua}


def _named_host(url: str) -> str | None:
    """The host of `url` when a CNAME can point at it (a name, not an address or localhost)."""
    host = (urlsplit(url).hostname or "").lower()
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    return host if "." in host and not host.endswith(".localhost") else None


def dkim_signing_records(domain: dict) -> list[tuple[str, str]]:
    """(name, TXT value) of the keys that sign the domain's mail: its own, or with a DKIM authority
    (envoi.accounts.dkim) its parent's, published in the parent's zone (d= the parent)."""
    authority = domain.get("dkim_authority")
    if authority:
        signer, rsa_sel, rsa_pub = authority["name"], authority["selector"], authority["public_key"]
        ed_sel, ed_pub = authority.get("ed25519_selector"), authority.get("ed25519_public_key")
    else:
        signer, rsa_sel, rsa_pub = domain["name"], domain["dkim_selector"], domain["dkim_public_key"]
        ed_sel, ed_pub = domain.get("dkim_ed25519_selector"), domain.get("dkim_ed25519_public_key")
    out = [(f"{rsa_sel}._domainkey.{signer}", dkim_keys.record_value("rsa", rsa_pub))]
    if ed_sel and ed_pub:
        out.append((f"{ed_sel}._domainkey.{signer}", dkim_keys.record_value("ed25519", ed_pub)))
    return out


def dns_records(domain: dict, *, spf_include: str | None, mx_hosts: tuple[str, ...], tracking_target: str | None,
                dmarc_rua: str | None = None, receiving: bool = False) -> dict:
    """The records a customer publishes, in Mailgun's sending/receiving_dns_records shape: SPF (with the
    platform's include), DKIM, the tracking CNAME (<web_prefix>.<domain>), a suggested DMARC policy, and
    the MX records of a receiving domain (one that receives mail: inbound routes or a mailing list)."""
    name = domain["name"]

    def record(rtype: str, rname: str, value: str, priority: str | None = None) -> dict:
        item = {"record_type": rtype, "name": rname, "value": value, "valid": "unknown",
                "is_active": True, "cached": []}
        if priority is not None:
            item["priority"] = priority
        return item

    sending = []
    if spf_include:
        sending.append(record("TXT", name, f"v=spf1 include:{spf_include} ~all"))
    sending += [record("TXT", rname, value) for rname, value in dkim_signing_records(domain)]
    if tracking_target:
        sending.append(record("CNAME", f"{domain['web_prefix']}.{name}", tracking_target))
    # A suggestion: monitoring only (p=none), so publishing it never loses mail; the customer's own
    # DMARC policy, whatever it says, counts as valid.
    sending.append(record("TXT", f"_dmarc.{name}", "v=DMARC1; p=none" + (f"; rua={dmarc_rua}" if dmarc_rua else "")))
    if domain.get("dkim_pending_selector") and not domain.get("dkim_authority"):
        # a rotation: the next key, to publish before signing moves to it
        sending.append({**record("TXT", f"{domain['dkim_pending_selector']}._domainkey.{name}",
                                 f"v=DKIM1; k=rsa; p={domain['dkim_pending_public_key']}"), "pending": True})
    for key in domain.get("dkim_retiring") or ():  # replaced keys, kept while mail they signed is queued
        sending.append({**record("TXT", f"{key['selector']}._domainkey.{key['signing_domain']}",
                                 dkim_keys.record_value(key["algorithm"], key["public_key"])), "retiring": True})
    receiving_records = [record("MX", name, host, "10") for host in mx_hosts] if receiving else []
    return {"sending_dns_records": sending, "receiving_dns_records": receiving_records}


def record_key(record: dict) -> str:
    """How a record's last check is filed: a changed value (a new key, another prefix) is a new record."""
    return f"{record['record_type']} {record['name']} {record['value']}"


def _required(record: dict) -> bool:
    """The records that prove control of the domain: SPF and the current DKIM key."""
    return record["record_type"] == "TXT" and not record.get("pending") and not record.get("retiring") and (
        record["value"].startswith("v=spf1") or "._domainkey." in record["name"])


def _check_domain_settings(*, spam_action: str | None = None, web_scheme: str | None = None,
                           web_prefix: str | None = None, ip_overflow: str | None = None) -> None:
    if ip_overflow is not None and ip_overflow not in ("overflow", "wait", "default"):
        raise InvalidInput("ip_overflow must be overflow, wait or default")
    if spam_action is not None and spam_action not in SPAM_ACTIONS:
        raise InvalidInput("spam_action must be disabled, block or tag")
    if web_scheme is not None and web_scheme not in WEB_SCHEMES:
        raise InvalidInput("web_scheme must be http or https")
    if web_prefix is not None and not WEB_PREFIX_RE.match(web_prefix):
        raise InvalidInput("web_prefix must be one DNS label (letters, digits and hyphens)")
