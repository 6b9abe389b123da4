"""Encryption at rest and secret hashing.

Bodies, DKIM private keys, webhook URL passwords and signing keys, and TOTP secrets are sealed with
AES-256-GCM under the region's key. Each sealed value names the key that sealed it (its key id), so
a region can rotate: seal with a new current key, keep the previous ones for opening until
`envoi encryption rotate` has re-sealed everything (envoi.infra.sealed_columns lists where sealed
values live). API keys are high-entropy random strings, so a plain SHA-256 is the right hash (like
GitHub tokens): it is fast enough to check on every request and cannot be brute-forced. SMTP
passwords are chosen by people, so they get argon2.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE = 12
# Version 1 (before key ids): 0x01, nonce, ciphertext; the context alone is the associated data.
_V1 = 0x01
# Version 2: 0x02, length of the key id, the key id (ASCII), nonce, ciphertext; the header (version,
# length, id) and the context are the associated data, so an id edited in place does not open.
_V2 = 0x02
KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
_password_hasher = PasswordHasher()


class CannotOpen(ValueError):
    """A sealed value does not open: a wrong key or context, or altered data."""


class UnknownKey(CannotOpen):
    """A sealed value names a key id this process was not given (retired too early?)."""


def derive_key_id(key: bytes) -> str:
    """The id of a key that was given without one: a short digest of it (it reveals nothing usable)."""
    return hashlib.sha256(b"envoi/key-id/v1\0" + key).hexdigest()[:12]


class Sealer:
    """AES-GCM under the region's current key; values sealed under a previous key still open.

    `key` is the current key (every seal uses it); `previous` are (id, key) pairs still accepted for
    opening. An empty id means the id derived from the key (derive_key_id)."""

    def __init__(self, key: bytes, *, key_id: str = "", previous: Iterable[tuple[str, bytes]] = ()):
        current = (key_id or derive_key_id(key), key)
        self._keys: dict[str, AESGCM] = {}
        for kid, material in (current, *previous):
            kid = kid or derive_key_id(material)
            if not KEY_ID.match(kid):
                raise ValueError(f"key id {kid!r}: 1 to 32 of A-Z a-z 0-9 . _ -")
            if kid in self._keys:
                raise ValueError(f"key id {kid!r} given twice")
            self._keys[kid] = AESGCM(material)
        self.current_id = current[0]
        self._current = self._keys[self.current_id]
        self.header = bytes([_V2, len(self.current_id)]) + self.current_id.encode()

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id this sealer opens, the current one first."""
        return tuple(self._keys)

    def seal(self, plaintext: bytes, context: bytes = b"") -> bytes:
        nonce = os.urandom(_NONCE)
        return self.header + nonce + self._current.encrypt(nonce, plaintext, self.header + context)

    def open(self, sealed: bytes, context: bytes = b"") -> bytes:
        sealed = bytes(sealed)
        version = sealed[:1]
        if version == bytes([_V2]):
            kid = sealed_key_id(sealed)
            aead = self._keys.get(kid)
            if aead is None:
                raise UnknownKey(f"sealed under key id {kid!r}, which this process does not have "
                                 "(ENVOI_SECRET_KEY / ENVOI_PREVIOUS_SECRET_KEYS)")
            start = 2 + len(kid)
            nonce = sealed[start:start + _NONCE]
            try:
                return aead.decrypt(nonce, sealed[start + _NONCE:], sealed[:start] + context)
            except InvalidTag:
                raise CannotOpen(f"sealed value under key id {kid!r} does not open (wrong context?)") from None
        if version == bytes([_V1]):
            # No id: whichever key sealed it (the current or a previous one) is the one that opens it.
            nonce, body = sealed[1:1 + _NONCE], sealed[1 + _NONCE:]
            for aead in self._keys.values():
                try:
                    return aead.decrypt(nonce, body, context or None)
                except InvalidTag:
                    continue
            raise CannotOpen("sealed value (version 1) opens under none of this process's keys")
        raise CannotOpen("unknown sealed-data version")

    def is_current(self, sealed: bytes) -> bool:
        return bytes(sealed[:len(self.header)]) == self.header

    def reseal(self, sealed: bytes, context: bytes = b"") -> bytes:
        """The same plaintext sealed under the current key."""
        return self.seal(self.open(sealed, context), context)


def sealed_key_id(sealed: bytes) -> str | None:
    """The id of the key that sealed a value; None for version 1 (sealed before key ids)."""
    if sealed[:1] != bytes([_V2]):
        return None
    return bytes(sealed[2:2 + sealed[1]]).decode("ascii", "replace")


def token_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def hash_password(password: str) -> str:
    return _password_hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    try:
        return _password_hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def hmac_sha256_hex(key: bytes, message: bytes) -> str:
    # The one-shot C digest: ~3x hmac.new(...).hexdigest(), which the webhook dispatcher pays per delivery.
    return hmac.digest(key, message, "sha256").hex()


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def certificate_expiry(cert_file: str | os.PathLike) -> float:
    """When the first certificate of a PEM chain file expires (Unix time): the expiry alert's gauge."""
    from cryptography import x509

    with open(cert_file, "rb") as f:
        return x509.load_pem_x509_certificate(f.read()).not_valid_after_utc.timestamp()
