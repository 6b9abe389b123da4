"""DKIM keys of an account's domains, as Mailgun manages them: /v1/dkim/keys (list, create or import,
delete), activation and deactivation, automatic rotation settings and rotate-now (/v1/dkim_management),
a domain's selector and its DKIM authority (sign as the parent domain).

A domain signs with the keys in its own row: one RSA key (always) and optionally one ed25519 key (a
second signature, RFC 8463). Other keys live in dkim_keys: 'inactive' ones (made or imported, not
signing) and 'retiring' ones (replaced, their record kept while mail they signed is queued). A key only
starts signing once its record is found in DNS: activation looks it up first, and a rotation's next key
(Accounts.rotate_dkim_key) waits as the domain's pending key until the rotation job
(envoi.mta.dkim_rotation) or a verification finds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from envoi.accounts import dkim_store, dnscheck
from envoi.accounts import store as domain_store
from envoi.accounts.errors import AlreadyExists, InvalidInput, NotFound
from envoi.accounts.service import Accounts
from envoi.infra import dkim_keys
from envoi.infra.crypto import Sealer
from envoi.infra.db import Database, IntegrityError

# A DNS label (RFC 6376 3.1 allows dotted selectors; Mailgun's keys API wants one label: no dot here).
SELECTOR_RE = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?")
RSA_BITS = (1024, 2048, 4096)  # Mailgun documents 1024 and 2048; Envoi also makes 4096
MAX_INACTIVE = 3  # keys waiting to be activated, per signing domain (Mailgun: at most 3 per authority)
MIN_ROTATION = 5 * 86400  # Mailgun: "The minimum allowed interval for rotation is 5 days"
DEFAULT_ROTATION = 30 * 86400  # rotation on without an interval
_INTERVAL_RE = re.compile(r"(\d{1,6})([dh])")


@dataclass(frozen=True)
class Key:
    """One key as the API lists it."""

    signing_domain: str
    selector: str
    algorithm: str  # rsa | ed25519
    bits: int | None
    public_key: str
    state: str  # active (signing) | pending (a rotation's next key) | inactive | retiring

    @property
    def dns_record(self) -> dict:
        return {"record_type": "TXT", "name": f"{self.selector}._domainkey.{self.signing_domain}",
                "value": dkim_keys.record_value(self.algorithm, self.public_key), "valid": "unknown",
                "is_active": self.state == "active", "cached": []}


def parse_interval(text: str) -> int:
    """Mailgun's rotation_interval ('5d', '120h') in seconds; at least 5 days."""
    match = _INTERVAL_RE.fullmatch((text or "").strip().lower())
    if not match:
        raise InvalidInput("rotation_interval must be a number of days or hours, e.g. 30d or 120h")
    seconds = int(match.group(1)) * (86400 if match.group(2) == "d" else 3600)
    if seconds < MIN_ROTATION:
        raise InvalidInput("rotation_interval must be at least 5d")
    return seconds


def format_interval(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 86400}d" if seconds % 86400 == 0 else f"{seconds // 3600}h"


def check_selector(selector: str | None) -> str:
    selector = (selector or "").strip().lower()
    if not SELECTOR_RE.fullmatch(selector):
        raise InvalidInput("selector must be one DNS label: letters, digits, '-' or '_' (no dot or space)")
    return selector


class DkimKeys:
    def __init__(self, db: Database, sealer: Sealer, accounts: Accounts, nameserver: tuple[str, int] | None = None):
        self.db = db
        self.sealer = sealer
        self.accounts = accounts
        self.nameserver = nameserver  # ENVOI_DNS_RESOLVER: where activation looks records up

    # listing ----------------------------------------------------------------------------------
    def list(self, account_id: int, signing_domain: str | None = None, selector: str | None = None) -> list[Key]:
        """Every key of the account's domains (or of one signing domain, or with one selector)."""
        if signing_domain:
            domains = [self.accounts.get_domain(signing_domain, account_id)]
        else:
            domains = self._all_domains(account_id)
        with self.db.transaction() as conn:
            rows = dkim_store.keys_of(conn, [d["id"] for d in domains])
        keys = []
        for d in domains:
            keys.append(Key(d["name"], d["dkim_selector"], "rsa", d["dkim_key_size"], d["dkim_public_key"], "active"))
            if d.get("dkim_ed25519_selector"):
                keys.append(Key(d["name"], d["dkim_ed25519_selector"], "ed25519", None, d["dkim_ed25519_public_key"],
                                "active"))
            if d.get("dkim_pending_selector"):
                keys.append(Key(d["name"], d["dkim_pending_selector"], "rsa", d["dkim_pending_key_size"],
                                d["dkim_pending_public_key"], "pending"))
        keys += [Key(r["signing_domain"], r["selector"], r["algorithm"], r["bits"], r["public_key"], r["state"])
                 for r in rows]
        return [k for k in keys if selector is None or k.selector == selector.lower()]

    def _all_domains(self, account_id: int) -> list[dict]:
        out, skip = [], 0
        while True:
            _, rows = self.accounts.list_domains(account_id, None, 1000, skip)
            out += rows
            if len(rows) < 1000:
                return out
            skip += 1000

    # creating, deleting -------------------------------------------------------------------------
    def create(self, account_id: int, signing_domain: str, selector: str, *, bits: str | None = None,
               algorithm: str | None = None, pem: bytes | None = None) -> Key:
        """A new key for signing_domain under selector, inactive until activated. RSA (bits 1024 or
        2048, Envoi also 4096; default 2048) or, Envoi's extension, algorithm=ed25519; or the private key
        imported from `pem` (RSA or Ed25519, PEM or DER)."""
        if not signing_domain:
            raise InvalidInput("signing_domain parameter is missing")
        selector = check_selector(selector)
        algorithm = (algorithm or "").strip().lower() or None
        if algorithm not in (None, "rsa", "ed25519"):
            raise InvalidInput("algorithm must be rsa or ed25519")
        size = None
        if bits not in (None, ""):
            try:
                size = int(bits)
            except ValueError as ex:
                raise InvalidInput("bits must be 1024 or 2048") from ex
            if size not in RSA_BITS:
                raise InvalidInput("bits must be 1024 or 2048")
            if algorithm == "ed25519":
                raise InvalidInput("bits is for RSA keys; an ed25519 key has no size to choose")
        domain = self.accounts.get_domain(signing_domain, account_id)
        if pem:
            try:
                algorithm_found, size_found, private, public = dkim_keys.import_pem(pem)
            except ValueError as ex:
                raise InvalidInput(str(ex)) from ex
            if algorithm and algorithm != algorithm_found:
                raise InvalidInput(f"pem holds an {algorithm_found} key, not {algorithm}")
            if size is not None and size != size_found:
                raise InvalidInput(f"pem holds a key of {size_found} bits, not {size}")
            algorithm, size = algorithm_found, size_found
        elif algorithm == "ed25519":
            private, public = dkim_keys.generate_ed25519()
        else:
            algorithm, size = "rsa", size or 2048
            private, public = dkim_keys.generate_rsa(size)
        sealed = self.sealer.seal(private, dkim_keys.context(algorithm, domain["name"]))
        try:
            with self.db.transaction() as conn:
                row = dkim_store.lock_domain(conn, domain["id"])
                if selector in _selectors_of(row) or dkim_store.get_key(conn, domain["id"], selector):
                    raise AlreadyExists(f"Domain key with selector {selector} already exists for {domain['name']}")
                if dkim_store.count_inactive(conn, domain["id"]) >= MAX_INACTIVE:
                    raise InvalidInput(f"{domain['name']} already has {MAX_INACTIVE} keys waiting to be activated")
                dkim_store.insert_key(conn, domain, selector, algorithm, size, sealed, public)
        except IntegrityError as ex:  # the same selector created at the same moment
            raise AlreadyExists(f"Domain key with selector {selector} already exists for {domain['name']}") from ex
        return Key(domain["name"], selector, algorithm, size, public, "inactive")

    def delete(self, account_id: int, signing_domain: str, selector: str) -> None:
        """Delete a key that does not sign: an inactive one, or a rotation's next key (the rotation is
        called off). The signing keys and the retiring ones (their mail is still queued) stay."""
        if not signing_domain or not selector:
            raise InvalidInput("signing_domain and selector parameters are required")
        domain = self.accounts.get_domain(signing_domain, account_id)
        selector = selector.strip().lower()
        with self.db.transaction() as conn:
            row = dkim_store.lock_domain(conn, domain["id"])
            if selector in (row["dkim_selector"], row["dkim_ed25519_selector"]):
                raise InvalidInput(f"Domain key {selector} signs {domain['name']}'s mail: activate another key first")
            if selector == row["dkim_pending_selector"]:
                dkim_store.clear_pending(conn, domain["id"])
                return
            key = dkim_store.get_key(conn, domain["id"], selector, lock=True)
            if key is None:
                raise NotFound("Domain key not found")
            if key["state"] == "retiring":
                raise InvalidInput(f"Domain key {selector} signed mail that is still queued; it is removed once"
                                   " that mail has left")
            dkim_store.delete_key(conn, key["id"])

    # activating ---------------------------------------------------------------------------------
    def activate(self, account_id: int, authority: str, selector: str) -> Key:
        """Sign with this key from now on, once its record is found in DNS (Mailgun: "dns records must be
        valid for a domain key to be activated"). An RSA key replaces the domain's RSA key, an ed25519 key
        its ed25519 key; the replaced key is kept retiring. A rotation's next key is activated the same way."""
        domain = self.accounts.get_domain(authority, account_id)
        selector = selector.strip().lower()
        current = self._find(domain, selector)
        if current.state == "active":
            return current
        if current.state == "retiring":
            raise InvalidInput(f"Domain key {selector} was replaced; create a new key")
        checked = dnscheck.check([current.dns_record], self.nameserver)[0]
        if checked["valid"] != "valid":
            raise InvalidInput(f"The DNS record {checked['name']} was not found with this key's value"
                               f" ({checked['valid']}); publish it, then activate the key")
        if current.state == "pending":
            with self.db.transaction() as conn:
                domain_store.promote_pending_dkim(conn, domain["id"], selector)
        else:
            with self.db.transaction() as conn:
                dkim_store.lock_domain(conn, domain["id"])
                key = dkim_store.get_key(conn, domain["id"], selector, lock=True)
                if key is None or key["state"] != "inactive":
                    raise NotFound("Domain key not found")
                if key["algorithm"] == "rsa":
                    domain_store.retire_rsa(conn, domain["id"])
                    dkim_store.delete_key(conn, key["id"])  # before its selector becomes the domain's
                    dkim_store.set_rsa(conn, domain["id"], selector, key["private_key"], key["public_key"],
                                       key["bits"])
                else:
                    dkim_store.retire_ed25519(conn, domain["id"])
                    dkim_store.delete_key(conn, key["id"])
                    dkim_store.set_ed25519(conn, domain["id"], selector, key["private_key"], key["public_key"])
        self.accounts.forget_domains()
        return Key(current.signing_domain, selector, current.algorithm, current.bits, current.public_key, "active")

    def switch_if_published(self, domain_id: int) -> bool:
        """The rotation job's step: the domain's pending key signs from now on if its record is found in
        DNS (the key it replaces is kept retiring). False: not found yet (or the lookup failed)."""
        domain = self.accounts.get_domain_by_id(domain_id)
        selector = domain.get("dkim_pending_selector")
        if not selector:
            return False
        pending = Key(domain["name"], selector, "rsa", domain["dkim_pending_key_size"],
                      domain["dkim_pending_public_key"], "pending")
        if dnscheck.check([pending.dns_record], self.nameserver)[0]["valid"] != "valid":
            return False
        with self.db.transaction() as conn:
            switched = domain_store.promote_pending_dkim(conn, domain_id, selector)
        self.accounts.forget_domains()
        return switched

    def deactivate(self, account_id: int, authority: str, selector: str) -> Key:
        """Stop signing with this key. The domain always signs with one RSA key, so only its ed25519 key
        can be deactivated (it is kept, inactive, and can be activated again); an RSA key is replaced by
        activating another."""
        domain = self.accounts.get_domain(authority, account_id)
        selector = selector.strip().lower()
        current = self._find(domain, selector)
        if current.state != "active":
            return current
        if current.algorithm == "rsa":
            raise InvalidInput(f"Domain key {selector} is {domain['name']}'s RSA key: activate another RSA key"
                               " to replace it")
        with self.db.transaction() as conn:
            row = dkim_store.lock_domain(conn, domain["id"])
            if row["dkim_ed25519_selector"] == selector:
                dkim_store.set_ed25519(conn, domain["id"], None, None, None)
                dkim_store.insert_key(conn, domain, selector, "ed25519", None, bytes(row["dkim_ed25519_key"]),
                                      row["dkim_ed25519_public_key"])
        self.accounts.forget_domains()
        return Key(current.signing_domain, selector, "ed25519", None, current.public_key, "inactive")

    def _find(self, domain: dict, selector: str) -> Key:
        for key in self.list(domain["account_id"], domain["name"]):
            if key.selector == selector:
                return key
        raise NotFound("Domain key not found")

    # selector, authority ------------------------------------------------------------------------
    def set_selector(self, account_id: int, name: str, selector: str) -> dict:
        """PUT /v3/domains/{d}/dkim_selector: the domain's RSA key under a new selector. Before the domain is
        verified nothing is published yet: the selector changes at once. After, the same key waits under
        the new selector as the domain's pending key, and signing moves to it once its record is found
        (the rotation job or a verification), the old selector's record kept while its mail is queued."""
        domain = self.accounts.get_domain(name, account_id)
        selector = check_selector(selector)
        if selector == domain["dkim_selector"]:
            return domain
        with self.db.transaction() as conn:
            row = dkim_store.lock_domain(conn, domain["id"])
            if selector in _selectors_of(row) or dkim_store.get_key(conn, domain["id"], selector):
                raise AlreadyExists(f"Domain key with selector {selector} already exists for {domain['name']}")
            if domain["state"] == "unverified":
                dkim_store.set_selector(conn, domain["id"], selector)
            else:
                domain_store.set_pending_dkim(conn, domain["id"], selector, bytes(row["dkim_private_key"]),
                                              row["dkim_public_key"], row["dkim_key_size"])
        self.accounts.forget_domains()
        return self.accounts.get_domain_by_id(domain["id"])

    def set_authority(self, account_id: int, name: str, own: bool) -> tuple[dict, bool]:
        """PUT /v3/domains/{d}/dkim_authority: self=false signs the domain's mail as its nearest parent
        domain of the same account, with the parent's keys (d= the parent; DMARC's relaxed alignment
        holds). self=true: as itself again. Returns (domain row, changed)."""
        domain = self.accounts.get_domain(name, account_id)
        authority_id = None
        if not own:
            parent = self._parent(domain)
            if parent is None:
                raise InvalidInput(f"No parent domain of {domain['name']} in this account to be its DKIM authority")
            authority_id = parent["id"]
        if authority_id == domain.get("dkim_authority_id"):
            return domain, False
        with self.db.transaction() as conn:
            if authority_id is not None and dkim_store.signs_for_others(conn, domain["id"]):
                raise InvalidInput(f"{domain['name']} is the DKIM authority of other domains; it signs as itself")
            dkim_store.set_authority(conn, domain["id"], authority_id)
        self.accounts.forget_domains()
        return self.accounts.get_domain_by_id(domain["id"]), True

    def authority_at_create(self, domain: dict) -> dict:
        """A new domain created with force_dkim_authority=false signs as its nearest parent domain of the
        same account when there is one; else it stays its own authority. Returns the domain row."""
        if self._parent(domain) is None:
            return domain
        return self.set_authority(domain["account_id"], domain["name"], False)[0]

    def _parent(self, domain: dict) -> dict | None:
        labels = domain["name"].split(".")
        for i in range(1, len(labels) - 1):
            try:
                parent = self.accounts.get_domain(".".join(labels[i:]), domain["account_id"])
            except NotFound:
                continue
            return parent if parent.get("dkim_authority_id") is None else None  # no chains
        return None

    # rotation -----------------------------------------------------------------------------------
    def set_rotation(self, account_id: int, name: str, enabled: bool, interval: str | None) -> dict:
        domain = self.accounts.get_domain(name, account_id)
        seconds = parse_interval(interval) if interval else None
        if seconds is not None and not enabled:
            raise InvalidInput("rotation_interval can only be set with rotation_enabled=true")
        if seconds is None and enabled:
            seconds = int(domain.get("dkim_rotation_interval") or DEFAULT_ROTATION)
        with self.db.transaction() as conn:
            dkim_store.set_rotation(conn, domain["id"], enabled, seconds)
        return self.accounts.get_domain_by_id(domain["id"])

    def rotate_now(self, account_id: int, name: str) -> dict:
        """A rotation now, on schedule or not: the next key, pending until its record is found."""
        domain = self.accounts.get_domain(name, account_id)
        if domain["state"] != "active":
            raise InvalidInput(f"only domains in enabled can rotate their keys. Current state: wait_verify"
                               f" ({domain['name']} is {domain['state']})")
        if domain.get("dkim_authority"):
            raise InvalidInput(f"{domain['name']} signs with the keys of its DKIM authority"
                               f" {domain['dkim_authority']['name']}: rotate that domain's key")
        return self.accounts.rotate_dkim_key(account_id, domain["name"])


def _selectors_of(row: dict) -> set[str]:
    return {s for s in (row["dkim_selector"], row["dkim_pending_selector"], row["dkim_ed25519_selector"]) if s}
