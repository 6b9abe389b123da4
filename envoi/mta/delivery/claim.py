"""The relay's first stage: lease due recipients from Postgres, with their messages, suppressions and
their domains' DKIM keys (cached for a minute, so a key rotation reaches the relay within one)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from envoi.accounts.service import Accounts
from envoi.infra import dkim_keys
from envoi.infra.crypto import Sealer
from envoi.infra.db import Database
from envoi.mta import store

log = logging.getLogger("envoi.relay")
# A lease is renewed while the relay holds the recipient, so a live relay never loses one; a relay
# killed on another host leaves leases that run out after ENVOI_RELAY_LEASE seconds. A relay restarted
# on the same host releases its own host's leases at once (one relay per host: DESIGN.md).
LEASE_SECONDS = 120
KEYS_SECONDS = 60


@dataclass(frozen=True)
class DomainKeys:
    """A sending domain's row and its unsealed DKIM keys, as the signer takes them."""

    domain: dict
    rsa_pem: bytes
    ed25519: tuple[str, bytes] | None  # (selector, key) for a second signature
    signing_domain: str  # d=: the domain itself, or its DKIM authority (a parent domain)
    selector: str  # s= of the RSA signature


@dataclass
class Claim:
    rows: list[dict]  # recipient rows, leased to this relay
    messages: dict[int, dict]  # message pk -> message row
    blocked: dict[int, str]  # recipient id -> suppression reason: not sent


class Claimer:
    """Leases: taken (claim), kept (renew) and, at start, released from a previous run on this host.
    Blocking calls: the engine runs them in a thread."""

    def __init__(self, db: Database, accounts: Accounts, sealer: Sealer, owner: str, suppressions=None, *,
                 lease: float = LEASE_SECONDS, affinity=None):
        self.db = db
        self.lease = lease
        # affinity() -> store.HostAffinity (domains and o:sending-ip pins whose IPs all live on other hosts,
        # and whose mail may overflow here): host-affine claiming, so mail pinned to another host's IPs is
        # not claimed and deferred here.
        self.affinity = affinity
        self.accounts = accounts
        self.sealer = sealer
        self.owner = owner  # lease owner: this host's relay
        # suppressions.blocked(conn, [(account_id, domain_id, address, tags)]) -> [reason or None]
        self.suppressions = suppressions
        self.leased: set[int] = set()  # recipient ids this relay holds leases on
        self._keys: dict[int, tuple[float, DomainKeys]] = {}

    def release_own(self) -> None:
        with self.db.transaction() as conn:
            released = store.release_leases(conn, self.owner)
        if released:
            log.warning("released %d leases left by a previous relay on %s", released, self.owner)

    def claim(self, limit: int) -> Claim:
        blocked: dict[int, str] = {}
        affinity = self.affinity() if self.affinity is not None else None
        with self.db.transaction() as conn:
            # Pinned mail overflows here once due for a whole lease: its host is down (or far behind).
            rows = store.claim_due(conn, limit, self.lease, self.owner, affinity, self.lease)
            if not rows:
                return Claim([], {}, {})
            messages = {m["id"]: m for m in store.load_messages(conn, list({r["message_pk"] for r in rows}))}
            if self.suppressions is not None:
                checks = [(r["account_id"], r["domain_id"], r["address"], messages[r["message_pk"]]["tags"])
                          for r in rows]
                for row, reason in zip(rows, self.suppressions.blocked(conn, checks), strict=True):
                    if reason:
                        blocked[row["id"]] = reason
            now = time.monotonic()
            missing = {m["domain_id"] for m in messages.values()
                       if (cached := self._keys.get(m["domain_id"])) is None or now - cached[0] > KEYS_SECONDS}
        for domain_id in missing:
            self._keys[domain_id] = (time.monotonic(), self._load_keys(domain_id))
        self.leased.update(r["id"] for r in rows)
        return Claim(rows, messages, blocked)

    def _load_keys(self, domain_id: int) -> DomainKeys:
        domain = self.accounts.get_domain_by_id(domain_id)
        # With a DKIM authority (envoi.accounts.dkim) the parent domain's keys sign, as the parent.
        signer = self.accounts.get_domain_by_id(domain["dkim_authority_id"]) if domain.get("dkim_authority_id") \
            else domain
        with self.db.transaction() as conn:
            ed = store.domain_ed25519(conn, signer["id"])
        ed25519 = None
        if ed is not None:
            ed25519 = (ed["selector"], dkim_keys.open_ed25519(self.sealer, signer["name"], ed["key"]))
        return DomainKeys(domain, self.accounts.dkim_private_key(signer), ed25519, signer["name"],
                          signer["dkim_selector"])

    def keys(self, domain_id: int) -> DomainKeys:
        """The domain of a claimed message (loaded by claim)."""
        return self._keys[domain_id][1]

    def renew(self, ids: list[int]) -> None:
        """Renew these leases (a copy of `leased` taken on the event loop, which changes it)."""
        with self.db.transaction() as conn:
            store.renew_leases(conn, ids, self.owner, self.lease)

    def hand_back(self) -> int:
        """Stopping: the leases still held (deliveries not finished) go back to the queue at once."""
        ids = list(self.leased)
        if not ids:
            return 0
        with self.db.transaction() as conn:
            released = store.hand_back_leases(conn, ids, self.owner)
        self.leased.clear()
        return released

    def done(self, recipient_ids) -> None:
        """Outcomes committed: the leases are no longer this relay's to renew."""
        self.leased.difference_update(recipient_ids)

    def depth(self) -> dict:
        with self.db.transaction() as conn:
            return store.queue_depth(conn)
