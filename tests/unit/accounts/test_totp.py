"""TOTP against RFC 6238's Appendix B test vectors, and recovery code shape."""

import base64

import pytest

from envoi.accounts import totp

SEEDS = {  # RFC 6238 Appendix B: the ASCII seeds for each hash, as base32
    "sha1": base64.b32encode(b"12345678901234567890").decode(),
    "sha256": base64.b32encode(b"12345678901234567890123456789012").decode(),
    "sha512": base64.b32encode(b"1234567890123456789012345678901234567890123456789012345678901234").decode(),
}
VECTORS = [  # (time, sha1, sha256, sha512), eight digits
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


@pytest.mark.parametrize(("at", "sha1", "sha256", "sha512"), VECTORS)
def test_rfc6238_vectors(at, sha1, sha256, sha512):
    for digest, expected in (("sha1", sha1), ("sha256", sha256), ("sha512", sha512)):
        assert totp.code(SEEDS[digest], at, digits=8, digest=digest) == expected


def test_verify_accepts_one_step_of_drift_and_no_more():
    secret = totp.new_secret()
    now = 1_700_000_000
    assert totp.verify(secret, totp.code(secret, now), now)
    assert totp.verify(secret, totp.code(secret, now - 30), now)
    assert not totp.verify(secret, totp.code(secret, now - 90), now)
    assert not totp.verify(secret, "abcdef", now)
    assert not totp.verify(secret, "", now)


def test_ten_distinct_recovery_codes():
    codes = totp.new_recovery_codes()
    assert len(codes) == len(set(codes)) == 10
    assert all(len(c) == 14 and c.count("-") == 2 for c in codes)
    assert totp.normalise_recovery_code(" " + codes[0].upper() + " ") == codes[0]
