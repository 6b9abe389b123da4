"""RFC 6238 time-based one-time codes (pyotp, confined here) and single-use recovery codes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import pyotp

RECOVERY_CODES = 10
DRIFT_STEPS = 1  # accept the previous and next 30-second code too (clock drift, slow typing)


def new_secret() -> str:
    """A random base32 secret (160 bits, RFC 4226's recommendation)."""
    return pyotp.random_base32(32)


def code(secret: str, at: float | None = None, *, digits: int = 6, digest: str = "sha1") -> str:
    return _totp(secret, digits, digest).at(int(time.time() if at is None else at))


def verify(secret: str, submitted: str, at: float | None = None) -> bool:
    return matching_step(secret, submitted, at) is not None


def matching_step(secret: str, submitted: str, at: float | None = None) -> int | None:
    """The 30-second time step whose code `submitted` is (within DRIFT_STEPS of now), else None. The
    caller keeps the last step used so one code cannot sign in twice (RFC 6238 section 5.2)."""
    submitted = submitted.strip().replace(" ", "")
    if not submitted.isdigit():
        return None
    otp = _totp(secret, 6, "sha1")
    now = int(time.time() if at is None else at)
    for offset in range(-DRIFT_STEPS, DRIFT_STEPS + 1):
        moment = now + offset * otp.interval
        if hmac.compare_digest(otp.at(moment), submitted):
            return moment // otp.interval
    return None


def provisioning_uri(secret: str, email: str, issuer: str = "Envoi") -> str:
    """The otpauth:// URI an authenticator app reads (shown as a QR code by the dashboard)."""
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=issuer)


def new_recovery_codes() -> list[str]:
    """Ten random codes like 'k3j9-x7q2-m4pd' (60 bits each), shown once, stored hashed."""
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
    return ["-".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(3))
            for _ in range(RECOVERY_CODES)]


def normalise_recovery_code(submitted: str) -> str:
    return submitted.strip().lower().replace(" ", "")


def _totp(secret: str, digits: int, digest: str) -> pyotp.TOTP:
    return pyotp.TOTP(secret, digits=digits, digest=getattr(hashlib, digest))
