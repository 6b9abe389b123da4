"""Sealed values name their key: the current key seals, previous keys still open, version 1 still opens."""

from __future__ import annotations

import base64
import os

import pytest

from envoi.infra.crypto import CannotOpen, Sealer, UnknownKey, derive_key_id, sealed_key_id
from envoi.infra.settings import Settings, SettingsError

OLD, NEW = os.urandom(32), os.urandom(32)


def _v1(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    """What the sealer wrote before key ids (version 1), byte for byte."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    return b"\x01" + nonce + AESGCM(key).encrypt(nonce, plaintext, context or None)


def test_seal_names_the_current_key_and_opens():
    sealer = Sealer(NEW, key_id="k2", previous=[("k1", OLD)])
    sealed = sealer.seal(b"body", b"ctx")
    assert sealed_key_id(sealed) == "k2" and sealer.is_current(sealed)
    assert sealer.open(sealed, b"ctx") == b"body"
    with pytest.raises(CannotOpen):
        sealer.open(sealed, b"other context")


def test_previous_keys_open_and_reseal_moves_to_the_current_one():
    old = Sealer(OLD, key_id="k1")
    sealed = old.seal(b"dkim pem", b"dkim:x")
    new = Sealer(NEW, key_id="k2", previous=[("k1", OLD)])
    assert new.open(sealed, b"dkim:x") == b"dkim pem"
    resealed = new.reseal(sealed, b"dkim:x")
    assert sealed_key_id(resealed) == "k2"
    assert Sealer(NEW, key_id="k2").open(resealed, b"dkim:x") == b"dkim pem"
    with pytest.raises(UnknownKey, match="k1"):
        Sealer(NEW, key_id="k2").open(sealed, b"dkim:x")


def test_an_edited_key_id_does_not_open():
    sealer = Sealer(NEW, key_id="k2", previous=[("k3", NEW)])
    sealed = sealer.seal(b"x")
    forged = sealed[:3] + b"3" + sealed[4:]  # k2 -> k3: the same key material, another header
    with pytest.raises(CannotOpen):
        sealer.open(forged)


def test_version_1_values_still_open_under_any_configured_key():
    legacy = _v1(OLD, b"stored body", b"storage-key")
    sealer = Sealer(NEW, previous=[("", OLD)])
    assert sealed_key_id(legacy) is None and not sealer.is_current(legacy)
    assert sealer.open(legacy, b"storage-key") == b"stored body"
    with pytest.raises(CannotOpen):
        Sealer(NEW).open(legacy, b"storage-key")


def test_ids_are_derived_when_not_given():
    sealer = Sealer(NEW)
    assert sealer.current_id == derive_key_id(NEW) and len(sealer.current_id) == 12
    assert sealed_key_id(sealer.seal(b"x")) == derive_key_id(NEW)


def test_settings_read_the_current_and_previous_keys():
    b64 = base64.b64encode
    s = Settings.from_env({"ENVOI_LOOKUP_KEY": b64(NEW).decode(), "ENVOI_SECRET_KEY": f"2026-12:{b64(NEW).decode()}",
                           "ENVOI_PREVIOUS_SECRET_KEYS": f"old:{b64(OLD).decode()}, {b64(NEW[::-1]).decode()}"})
    assert (s.secret_key, s.secret_key_id) == (NEW, "2026-12")
    assert s.previous_secret_keys == (("old", OLD), ("", NEW[::-1]))
    assert Settings.from_env({"ENVOI_LOOKUP_KEY": b64(NEW).decode(), "ENVOI_SECRET_KEY": b64(NEW).decode()}).secret_key_id == ""
    for bad in ({"ENVOI_LOOKUP_KEY": b64(NEW).decode(), "ENVOI_SECRET_KEY": f"bad id!:{b64(NEW).decode()}"},
                {"ENVOI_LOOKUP_KEY": b64(NEW).decode(), "ENVOI_SECRET_KEY": b64(NEW).decode(), "ENVOI_PREVIOUS_SECRET_KEYS": "x:c2hvcnQ="}):
        with pytest.raises(SettingsError):
            Settings.from_env(bad)
    with pytest.raises(ValueError, match="twice"):
        Sealer(NEW, key_id="a", previous=[("a", OLD)])
