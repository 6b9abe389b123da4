"""DKIM private keys, RSA and ed25519: made, sealed at rest, unsealed and parsed (with a cache) here.

In infra, the layer that owns `cryptography`, so both users reach it: accounts generates and seals
a domain's RSA key when the domain is created (accounts sits below mta), the `domains ed25519`
command adds the ed25519 one, and the relay unseals and parses them to sign (envoi.mta.signing).
Each key is sealed under a context naming its domain, so a sealed key copied to another domain's
row does not open.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from envoi.infra.crypto import Sealer

RSA_KEY_SIZES = (1024, 2048, 4096)


# generation -----------------------------------------------------------------------------------
def generate_rsa(bits: int = 2048) -> tuple[bytes, str]:
    """Return (PKCS#8 PEM private key, base64 DER public key for the TXT record `k=rsa; p=`)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _pem(key), base64.b64encode(der).decode("ascii")


def generate_ed25519() -> tuple[bytes, str]:
    """Return (PKCS#8 PEM private key, base64 raw public key for the TXT record `k=ed25519; p=`)."""
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _pem(key), base64.b64encode(raw).decode("ascii")


def import_pem(data: bytes) -> tuple[str, int | None, bytes, str]:
    """A private key a customer imports (POST /v1/dkim/keys `pem`): PEM (PKCS#1 or PKCS#8) or DER, RSA
    of 1024 bits or more, or Ed25519. Returns (algorithm "rsa" | "ed25519", RSA bits or None, the key as
    PKCS#8 PEM, base64 public key for the record's p=). ValueError for anything else."""
    data = data.strip()
    try:
        if data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError) as ex:  # TypeError: encrypted with a password
        raise ValueError("pem is not an unencrypted private key") from ex
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:  # RFC 8301
            raise ValueError(f"RSA key of {key.key_size} bits is too short for DKIM")
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return "rsa", key.key_size, _pem(key), base64.b64encode(der).decode("ascii")
    if isinstance(key, Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "ed25519", None, _pem(key), base64.b64encode(raw).decode("ascii")
    raise ValueError("pem must hold an RSA or Ed25519 private key")


def record_value(algorithm: str, public_b64: str) -> str:
    """The TXT record of a key: what receivers look up at <selector>._domainkey.<signing domain>."""
    return f"v=DKIM1; k={algorithm}; p={public_b64}"


def context(algorithm: str, domain_name: str) -> bytes:
    """The sealing context of a key of this algorithm: the same as the domain row's own keys, so a key
    moves between dkim_keys and the domain row without being opened."""
    return ed25519_context(domain_name) if algorithm == "ed25519" else rsa_context(domain_name)


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


# sealing at rest ------------------------------------------------------------------------------
def rsa_context(domain_name: str) -> bytes:
    return b"dkim:" + domain_name.encode()


def ed25519_context(domain_name: str) -> bytes:
    return b"dkim-ed25519:" + domain_name.encode()


def seal_rsa(sealer: Sealer, domain_name: str, pem: bytes) -> bytes:
    return sealer.seal(pem, rsa_context(domain_name))


def open_rsa(sealer: Sealer, domain_name: str, sealed: bytes) -> bytes:
    return sealer.open(sealed, rsa_context(domain_name))


def seal_ed25519(sealer: Sealer, domain_name: str, pem: bytes) -> bytes:
    return sealer.seal(pem, ed25519_context(domain_name))


def open_ed25519(sealer: Sealer, domain_name: str, sealed: bytes) -> bytes:
    return sealer.open(sealed, ed25519_context(domain_name))


# parsing --------------------------------------------------------------------------------------
def load_rsa(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("DKIM key is not an RSA private key")
    if key.key_size < 1024:  # RFC 8301: verifiers reject shorter keys
        raise ValueError(f"RSA key of {key.key_size} bits is too short for DKIM")
    return key


def load_ed25519(data: bytes) -> Ed25519PrivateKey:
    """Accept PEM, the raw 32-byte seed, or the seed in base64 (dkimpy's format)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("DKIM key is not an Ed25519 private key")
        return key
    if len(data) != 32:
        data = base64.b64decode(data, validate=True)
    if len(data) != 32:
        raise ValueError("an Ed25519 private key is 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(data)


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    size: int


class ParsedKeys:
    """Parsed private keys in an LRU cache (parsing a PEM costs more than a signature). Thread-safe:
    the relay signs in a thread pool."""

    def __init__(self, size: int = 1024):
        self._size = size
        self._keys: OrderedDict[tuple[str, str, bytes], object] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = 0

    def rsa(self, domain: str, selector: str, pem: bytes) -> rsa.RSAPrivateKey:
        return self._get(domain, selector, pem, load_rsa)

    def ed25519(self, domain: str, selector: str, data: bytes) -> Ed25519PrivateKey:
        return self._get(domain, selector, data, load_ed25519)

    def info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._keys))

    def _get(self, domain: str, selector: str, data: bytes, load: Callable[[bytes], object]):
        # Hash of the key material in the cache key: a rotated key under the same selector is
        # picked up at once, and the PEM itself is not kept as a dictionary key.
        cache_key = (domain.lower(), selector, hashlib.sha256(data).digest())
        with self._lock:
            key = self._keys.get(cache_key)
            if key is not None:
                self._keys.move_to_end(cache_key)
                self._hits += 1
                return key
            self._misses += 1
        key = load(data)  # parse outside the lock; a rare duplicate parse is harmless
        with self._lock:
            self._keys[cache_key] = key
            while len(self._keys) > self._size:
                self._keys.popitem(last=False)
        return key
