"""DKIM key rotation on a schedule (Mailgun's /v1/dkim_management), run by `envoi scheduler`.

Each run, for every domain of the region:
  1. rotation on and its key older than its interval: the next key is made, under a new selector, and
     waits as the domain's pending key (Accounts.rotate_dkim_key); the current key goes on signing;
  2. a pending key whose record is now found in DNS becomes the signing key (DkimKeys.activate looks it
     up first); the key it replaces is kept retiring, its record still listed in the domain's records;
  3. a retiring key is removed once no queued mail signed with it is left: no waiting recipient of a
     message whose stored DKIM-Signature names it (d= and s=), and no recipient in flight whose
     signature is not stored yet. `grace` covers the relay's key cache (KEYS_SECONDS): for that long
     after a switch a relay may still sign with the old key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from envoi.accounts import dkim_store
from envoi.accounts.dkim import DEFAULT_ROTATION, DkimKeys
from envoi.accounts.service import Accounts
from envoi.infra.db import Database
from envoi.mta import store
from envoi.mta.delivery.claim import KEYS_SECONDS, LEASE_SECONDS

log = logging.getLogger("envoi.dkim")


@dataclass
class RotationRun:
    rotated: list[str]  # domains whose next key was made
    switched: list[str]  # domains now signing with their next key
    waiting: list[str]  # domains whose next key's record is not found yet
    retired: list[str]  # "selector._domainkey.domain" of keys removed
    kept: list[str]  # retiring keys still needed by queued mail


class DkimRotation:
    def __init__(self, db: Database, accounts: Accounts, dkim: DkimKeys, *,
                 grace: float = KEYS_SECONDS + LEASE_SECONDS):
        self.db = db
        self.accounts = accounts
        self.dkim = dkim
        self.grace = grace

    def run(self) -> RotationRun:
        out = RotationRun([], [], [], [], [])
        with self.db.transaction() as conn:
            due = dkim_store.due_for_rotation(conn, DEFAULT_ROTATION)
        for domain in due:
            self.accounts.rotate_dkim_key(domain["account_id"], domain["name"])
            out.rotated.append(domain["name"])
        with self.db.transaction() as conn:
            pending = dkim_store.with_pending(conn)
        for domain in pending:  # not found in DNS yet (or the lookup failed): the next run looks again
            (out.switched if self.dkim.switch_if_published(domain["id"]) else out.waiting).append(domain["name"])
        with self.db.transaction() as conn:
            for key in dkim_store.retiring(conn, self.grace):
                name = f"{key['selector']}._domainkey.{key['signing_domain']}"
                if store.signed_and_waiting(conn, key["domain_ids"], key["signing_domain"], key["selector"]):
                    out.kept.append(name)
                else:
                    dkim_store.delete_key(conn, key["id"])
                    out.retired.append(name)
        if out.rotated or out.switched or out.retired:
            self.accounts.forget_domains()
            log.info("DKIM rotation: %s", out)
        return out
