"""Encryption at rest and secret hashing.

Bodies and DKIM private keys are sealed with AES-256-GCM under the region's key. API keys are
high-entropy random strings, so a plain SHA-256 is the right hash (like GitHub tokens): it is
fast enough to check on every request and cannot be brute-forced. SMTP passwords are chosen by
people, so they get argon2.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE = 12
_VERSION = b"\x01"
_password_hasher = PasswordHasher()


class Sealer:
    """AES-GCM with a per-region key; the output carries a version byte and its nonce."""

    def __init__(self, key: bytes):
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, context: bytes = b"") -> bytes:
        nonce = os.urandom(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, context or None)

    def open(self, sealed: bytes, context: bytes = b"") -> bytes:
        if sealed[:1] != _VERSION:
            raise ValueError("unknown sealed-data version")
        nonce = sealed[1 : 1 + _NONCE]
        return self._aead.decrypt(nonce, bytes(sealed[1 + _NONCE :]), context or None)


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
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
