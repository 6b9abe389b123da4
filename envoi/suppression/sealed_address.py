"""How a suppression entry keeps its address: sealed, plus a keyed hash to find it.

The hash is HMAC-SHA256 of the canonical (lower-cased) value under ENVOI_LOOKUP_KEY, a key of its own:
rotating ENVOI_SECRET_KEY (which seals) leaves every lookup working. The sealed copy is bound to its
table and domain (the AEAD context), so a sealed value copied into another list or domain does not open.
Erasing a person drops the sealed copy and keeps the hash: the entry still suppresses, nothing readable
remains, and an address given again (a send, a GET) still finds it.
"""

from __future__ import annotations

import hashlib
import hmac

from envoi.infra.crypto import Sealer

_DOMAIN_SEPARATION = b"envoi/suppression-address/v1\x00"


class AddressVault:
    def __init__(self, sealer: Sealer, lookup_key: bytes):
        if len(lookup_key) != 32:
            raise ValueError("the lookup key must be 32 bytes (ENVOI_LOOKUP_KEY)")
        self._sealer = sealer
        self._lookup = hmac.new(lookup_key, _DOMAIN_SEPARATION, hashlib.sha256)

    def lookup(self, value: str) -> bytes:
        """The keyed hash an entry is found by (32 bytes)."""
        mac = self._lookup.copy()  # the key schedule is computed once
        mac.update(value.lower().encode("utf-8", "surrogatepass"))  # a hostile pivot cannot make it raise
        return mac.digest()

    def seal(self, table: str, domain_id: int, value: str) -> bytes:
        return self._sealer.seal(value.lower().encode(), context(table, domain_id))

    def open(self, table: str, domain_id: int, sealed: bytes | None) -> str | None:
        """The value, or None once erased."""
        if sealed is None:
            return None
        return self._sealer.open(bytes(sealed), context(table, domain_id)).decode()


def context(table: str, domain_id: int) -> bytes:
    return f"{table}:{domain_id}".encode()
