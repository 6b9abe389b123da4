"""What one delivery attempt to one recipient came to, and how replies are classified."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


class Kind(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"  # temporary: try again later
    FAILED = "failed"  # permanent


class BounceClass(StrEnum):
    """Why a recipient failed, from the enhanced status code (RFC 3463), in KumoMTA's spirit."""

    NONE = ""
    INVALID_RECIPIENT = "invalid-recipient"
    MAILBOX_FULL = "mailbox-full"
    POLICY = "policy"
    SPAM_BLOCK = "spam-block"
    DNS = "dns"
    MESSAGE = "message"
    CONNECTION = "connection"
    PROTOCOL = "protocol"
    EXPIRED = "expired"
    OTHER = "other"


@dataclass
class Outcome:
    kind: Kind
    code: int
    message: str
    enhanced_code: str = ""
    mx_host: str = ""
    tls: bool = False
    certificate_verified: bool = False
    sending_ip: str = ""
    session_seconds: float = 0.0
    bounce_class: BounceClass = BounceClass.NONE
    retry_after: float | None = None  # the remote asked us to wait this long
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def recipient_class(self) -> bool:
        """A permanent failure that says the address itself is bad: the only kind to suppress."""
        return self.kind is Kind.FAILED and self.bounce_class is BounceClass.INVALID_RECIPIENT


def enhanced_code(message: str) -> str:
    match = ENHANCED.match(message)
    return ".".join(match.groups()) if match else ""


def bounce_class(code: int, enhanced: str, message: str) -> BounceClass:
    if code < 400:
        return BounceClass.NONE
    subject_detail = enhanced.split(".", 1)[1] if enhanced else ""
    text = message.lower()
    if any(word in text for word in ("spam", "blocklist", "blacklist", "listed", "reputation")):
        return BounceClass.SPAM_BLOCK
    if subject_detail in ("1.1", "1.2", "1.3", "1.6", "1.10"):
        return BounceClass.INVALID_RECIPIENT if subject_detail != "1.2" else BounceClass.DNS
    if subject_detail in ("2.2", "2.3"):
        return BounceClass.MAILBOX_FULL if subject_detail == "2.2" else BounceClass.MESSAGE
    if subject_detail.startswith("7."):
        return BounceClass.POLICY
    if subject_detail.startswith("4."):
        return BounceClass.CONNECTION
    if subject_detail.startswith("6.") or subject_detail.startswith("3."):
        return BounceClass.MESSAGE
    if subject_detail.startswith("5."):
        return BounceClass.PROTOCOL
    if not enhanced and code == 550 and ("user" in text or "mailbox" in text or "recipient" in text):
        return BounceClass.INVALID_RECIPIENT
    return BounceClass.OTHER


RETRY_HINT = re.compile(r"(?:try again|retry)\D{0,20}(\d{1,6})\s*(s|sec|seconds|m|min|minutes)?\b", re.I)


def retry_hint(message: str) -> float | None:
    """Seconds a server asked us to wait ("try again in 120 seconds"), if it said so."""
    match = RETRY_HINT.search(message)
    if not match:
        return None
    value = float(match.group(1))
    unit = (match.group(2) or "s").lower()
    return value * 60 if unit.startswith("m") else value


def from_reply(code: int, message: str, **context) -> Outcome:
    message = (message or "").strip()
    enhanced = enhanced_code(message)
    if 200 <= code < 300:
        kind = Kind.DELIVERED
    elif 400 <= code < 500:
        kind = Kind.RETRY
    else:
        kind = Kind.FAILED
    return Outcome(kind, code, message, enhanced_code=enhanced, bounce_class=bounce_class(code, enhanced, message),
                   retry_after=retry_hint(message) if kind is Kind.RETRY else None, **context)
