"""Routing, never transfer: a login of another region gets an answer naming that region, and no data of it
moves or stays anywhere.

A region receiving an SMTP login or a dashboard email it does not know asks each peer region whether it
knows it. The question carries only a keyed hash, HMAC-SHA256(ENVOI_ROUTING_SECRET, kind:identifier), and is
signed with the same secret; the peer compares it with the same hash of its own logins, computed in the
query, and answers yes or no. Neither side writes a row, a Redis key or a log line holding the identifier
or its hash. Both regions hold the secret, so the hash is a pseudonym between them (a peer could confirm
a guessed address), not anonymity: what keeps the promise is that nothing is sent in the clear or stored.
A peer down or slower than ENVOI_ROUTING_TIMEOUT counts as "no": the login gets a plain failure.

The peer's comparison hashes every candidate row (no index can hold a keyed hash without the key): fine
for the tens of thousands of logins of a region; a larger one would keep the hashes in an indexed column.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Mapping

from envoi.accounts.errors import RoutingRequestInvalid

log = logging.getLogger(__name__)

KINDS = ("smtp", "user")
MAX_AGE = 60.0  # seconds a signed lookup stays valid (clock skew between regions included)
MAX_BODY = 1024
_BLOCK = 64  # SHA-256's block size, for HMAC computed in SQL

# "Is this login known here?" in plain form (the identifier from the request), and the identifier as the
# peer will hash it (Postgres's lower(), so both regions normalise it the same way).
_LOCAL = {
    "smtp": ("SELECT EXISTS (SELECT 1 FROM smtp_credentials c JOIN domains d ON d.id = c.domain_id"
             " JOIN accounts a ON a.id = d.account_id WHERE c.login = lower(%(id)s::text) AND a.state <> 'closed')"
             " AS known, lower(%(id)s::text) AS normal"),
    "user": ("SELECT EXISTS (SELECT 1 FROM users u LEFT JOIN accounts a ON a.id = u.account_id"
             " WHERE lower(u.email) = lower(%(id)s::text) AND coalesce(a.state, '') <> 'closed')"
             " AS known, lower(%(id)s::text) AS normal"),
}
_HMAC = "sha256(%(okey)s || sha256(%(ikey)s || convert_to(%(kind)s::text || ':' || {column}, 'UTF8')))"
_BY_DIGEST = {
    "smtp": ("SELECT EXISTS (SELECT 1 FROM smtp_credentials c JOIN domains d ON d.id = c.domain_id"
             " JOIN accounts a ON a.id = d.account_id WHERE a.state <> 'closed' AND "
             + _HMAC.format(column="c.login") + " = %(digest)s) AS known"),
    "user": ("SELECT EXISTS (SELECT 1 FROM users u LEFT JOIN accounts a ON a.id = u.account_id"
             " WHERE coalesce(a.state, '') <> 'closed' AND "
             + _HMAC.format(column="lower(u.email)") + " = %(digest)s) AS known"),
}


def _askable(identifier: str) -> bool:
    """An identifier a login could have: bounded, no NUL, encodable (Postgres takes nothing else)."""
    if not identifier or len(identifier) > 320 or "\x00" in identifier:
        return False
    try:
        identifier.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def login_digest(secret: bytes, kind: str, normal: str) -> bytes:
    return hmac.new(secret, f"{kind}:{normal}".encode(), hashlib.sha256).digest()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(secret, b"region-lookup\n" + timestamp.encode() + b"\n" + body, hashlib.sha256).hexdigest()


class RegionRouter:
    """Which region a login unknown here belongs to (asking), and whether one is known here (answering)."""

    def __init__(self, db, region: str, secret: bytes, peers: Mapping[str, str], timeout: float = 2.0):
        self.db = db
        self.region = region
        self.secret = secret
        self.peers = {r: url for r, url in peers.items() if r != region}
        self.timeout = timeout

    @property
    def enabled(self) -> bool:
        return bool(self.secret)

    # asking ---------------------------------------------------------------------------------------
    def home_of(self, kind: str, identifier: str) -> str | None:
        """The other region that knows this login, or None (known here, unknown everywhere, or no peer
        answered in time)."""
        if not self.enabled or not self.peers or not _askable(identifier):
            return None
        with self.db.transaction() as conn:
            row = conn.execute(_LOCAL[kind], {"id": identifier.strip()}).fetchone()
        if row["known"]:
            return None
        body = json.dumps({"kind": kind, "digest": login_digest(self.secret, kind, row["normal"]).hex()}).encode()
        for region, base in sorted(self.peers.items()):
            if self._ask(region, base, body):
                return region
        return None

    def _ask(self, region: str, base: str, body: bytes) -> bool:
        timestamp = str(int(time.time()))
        request = urllib.request.Request(
            f"{base}/v1/regions/lookup", data=body, method="POST",
            headers={"Content-Type": "application/json", "X-Envoi-Timestamp": timestamp,
                     "X-Envoi-Signature": sign(self.secret, timestamp, body)})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return json.loads(resp.read(MAX_BODY)).get("known") is True
        except (OSError, ValueError, AttributeError) as ex:  # down, slow, refused or garbled: "no"
            log.warning("region lookup: the %s region did not answer (%s)", region.upper(), type(ex).__name__)
            return False

    # answering ------------------------------------------------------------------------------------
    def answer(self, body: bytes, timestamp: str | None, signature: str | None) -> bool:
        """Whether this region knows the login whose hash a peer sent; RoutingRequestInvalid if the request
        is not a fresh one signed with the shared secret."""
        if not self.enabled or not timestamp or not signature or len(body) > MAX_BODY:
            raise RoutingRequestInvalid()
        try:
            fresh = abs(time.time() - int(timestamp)) <= MAX_AGE
        except ValueError:
            fresh = False
        if not fresh or not hmac.compare_digest(sign(self.secret, timestamp, body), signature):
            raise RoutingRequestInvalid()
        try:
            question = json.loads(body)
            kind, digest = question["kind"], bytes.fromhex(question["digest"])
        except (ValueError, KeyError, TypeError) as ex:
            raise RoutingRequestInvalid() from ex
        if kind not in KINDS or len(digest) != 32:
            raise RoutingRequestInvalid()
        key = self.secret if len(self.secret) <= _BLOCK else hashlib.sha256(self.secret).digest()
        key = key.ljust(_BLOCK, b"\0")
        params = {"kind": kind, "digest": digest,
                  "ikey": bytes(b ^ 0x36 for b in key), "okey": bytes(b ^ 0x5C for b in key)}
        with self.db.transaction() as conn:
            return bool(conn.execute(_BY_DIGEST[kind], params).fetchone()["known"])
