"""What one delivery attempt to one recipient came to, and how replies are classified.

Classification is table-driven, in the spirit of KumoMTA's bounce-classify: a reply (SMTP code,
RFC 3463 enhanced status code, text) is put into one `BounceClass` by, in order:

1. **strong text rules**: provider texts that say more than the codes do (Spamhaus listings inside
   a 5.1.1, Exchange Online's "Recipient address rejected: Access denied" under 5.4.1, Gmail's
   "over quota" / "disabled" texts, Yahoo's [TSS04] deferrals);
2. **the enhanced code table** (`ENHANCED_TABLE`, subject.detail -> class) for specific codes;
3. **weak text rules** ("user unknown", "mailbox unavailable", ...) for generic or missing codes
   (X.0.0, 5.5.0, "550 no such user" without an enhanced code);
4. the enhanced code's subject alone, then the basic SMTP code.

Only `RECIPIENT_CLASSES` say the address itself is bad; `Outcome.recipient_class` (a permanent
failure in one of them) is the only thing that may feed the suppression list. A full mailbox, a
spam block or a policy rejection is a permanent failure of *this* message, not of the address.

The same classifier serves live SMTP replies (engine) and asynchronous DSNs (bounces.inbound):
`classify_reply("smtp; 550-5.1.1 The email account ...")` accepts a DSN Diagnostic-Code as is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

# An enhanced status code at the start of a reply text, optionally after the reply code itself
# ("5.1.1 ...", "550 5.1.1 ...", "550-5.1.1 ..."), as aiosmtplib or a DSN Diagnostic-Code give it.
ENHANCED = re.compile(r"^\s*(?:[245]\d\d[ -])?\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY = re.compile(r"^\s*(?:smtp\s*;\s*)?([245]\d\d)(?:[ -]|$)", re.I)


class Kind(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"  # temporary: try again later
    FAILED = "failed"  # permanent


class BounceClass(StrEnum):
    """Why a recipient failed (RFC 3463 enhanced codes + provider texts), in KumoMTA's spirit."""

    NONE = ""
    INVALID_RECIPIENT = "invalid-recipient"  # no such user / domain accepts no mail (null MX)
    INACTIVE_MAILBOX = "inactive-mailbox"  # the account exists but is disabled for good
    MAILBOX_FULL = "mailbox-full"  # over quota: the address is fine, try again another day
    POLICY = "policy"  # relaying denied, local policy, greylisting, generic refusals
    SPAM_BLOCK = "spam-block"  # blocklists, reputation, content judged spam
    AUTHENTICATION = "authentication"  # SPF / DKIM / DMARC / reverse DNS failures of *our* mail
    RATE_LIMIT = "rate-limit"  # throttling, "too many", Yahoo TSS04, Outlook 4.7.500
    DNS = "dns"  # destination domain does not resolve / cannot be routed
    MESSAGE = "message"  # too big, bad content or media
    CONNECTION = "connection"
    PROTOCOL = "protocol"
    EXPIRED = "expired"
    OTHER = "other"


#: Classes that say the address itself is undeliverable: the only ones suppressed on a hard bounce.
RECIPIENT_CLASSES = frozenset({BounceClass.INVALID_RECIPIENT, BounceClass.INACTIVE_MAILBOX})


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
        return self.kind is Kind.FAILED and self.bounce_class in RECIPIENT_CLASSES


def enhanced_code(message: str) -> str:
    match = ENHANCED.match(message or "")
    return ".".join(match.groups()) if match else ""


def reply_code(text: str) -> int | None:
    """The 3-digit SMTP code at the start of a reply or DSN Diagnostic-Code ("smtp; 550 ..."), if any."""
    match = _REPLY.match(text or "")
    return int(match.group(1)) if match else None


# -- the rule tables ------------------------------------------------------------------------------
def _rx(*alternatives: str) -> re.Pattern:
    """One pattern from alternatives (write them lower-case: they run on lower-cased text, which is
    several times cheaper than re.I)."""
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


#: Texts that override whatever the codes say. Order matters: first match wins.
STRONG_RULES: tuple[tuple[BounceClass, re.Pattern], ...] = (
    # Exchange Online directory-based edge blocking: the recipient does not exist (sent as 5.4.1).
    (BounceClass.INVALID_RECIPIENT, _rx(r"recipient address rejected: access denied")),
    (BounceClass.RATE_LIMIT, _rx(
        r"rate[- ]?limit", r"too many (?:messages|connections|concurrent|mails|emails|sessions)",
        r"unusual rate", r"receiving mail at a rate", r"exceeded (?:the )?(?:\w+ )?rate",
        r"\[ts[s]?0\d\]", r"temporarily deferred", r"throttl", r"server busy", r"4\.7\.500",
        r"sending (?:too|so) (?:fast|much)", r"try again later.{0,40}volume")),
    (BounceClass.POLICY, _rx(r"gr[ea]ylist")),
    (BounceClass.AUTHENTICATION, _rx(
        r"\bdmarc\b", r"\bspf\b", r"\bdkim\b", r"unauthenticated", r"not authenticated",
        r"authentication (?:check|fail)", r"reverse dns", r"\bptr\b", r"\brdns\b")),
    (BounceClass.SPAM_BLOCK, _rx(
        r"spamhaus", r"spamcop", r"barracuda", r"sorbs", r"\bsurbl\b", r"\buribl\b", r"\bdnsbl\b", r"\brbl\b",
        r"block ?list", r"black ?list", r"listed (?:at|in|on|by)", r"blocked using",
        r"reputation", r"unsolicited", r"\bspam\b", r"junk mail", r"\buce\b", r"bulk mail",
        r"part of their network is on our block")),
    (BounceClass.INACTIVE_MAILBOX, _rx(
        r"(?:mailbox|account|user) (?:is |has been )?(?:disabled|deactivated|suspended|inactive|expired|closed)",
        r"inactive (?:user|account|mailbox)", r"no longer (?:active|in use|valid)",
        r"account (?:is )?(?:not active|discontinued)", r"\(554\.30\)")),
    (BounceClass.MAILBOX_FULL, _rx(
        r"over ?quota", r"quota (?:exceeded|full)", r"exceed\w* (?:the |its |their |his |her )?"
        r"(?:\w+ )?(?:storage|quota)", r"mailbox (?:is )?full", r"mailbox size limit",
        r"full mailbox", r"out of storage", r"not enough (?:storage|space)", r"insufficient storage")),
)

#: subject.detail of RFC 3463 / IANA enhanced codes -> class (specific codes only).
ENHANCED_TABLE: dict[str, BounceClass] = {
    "1.1": BounceClass.INVALID_RECIPIENT,  # bad destination mailbox address
    "1.2": BounceClass.DNS,  # bad destination system address (domain)
    "1.3": BounceClass.INVALID_RECIPIENT,  # bad destination mailbox address syntax
    "1.4": BounceClass.INVALID_RECIPIENT,  # destination mailbox address ambiguous
    "1.6": BounceClass.INVALID_RECIPIENT,  # destination mailbox has moved, no forwarding address
    "1.7": BounceClass.POLICY,  # bad sender's mailbox address syntax (ours)
    "1.8": BounceClass.POLICY,  # bad sender's system address (ours)
    "1.10": BounceClass.INVALID_RECIPIENT,  # recipient address has null MX (RFC 7505)
    "2.1": BounceClass.INACTIVE_MAILBOX,  # mailbox disabled, not accepting messages
    "2.2": BounceClass.MAILBOX_FULL,  # mailbox full
    "2.3": BounceClass.MESSAGE,  # message length exceeds administrative limit
    "3.4": BounceClass.MESSAGE,  # message too big for system
    "4.1": BounceClass.CONNECTION,  # no answer from host
    "4.2": BounceClass.CONNECTION,  # bad connection
    "4.3": BounceClass.DNS,  # directory server failure
    "4.4": BounceClass.DNS,  # unable to route
    "4.5": BounceClass.RATE_LIMIT,  # mail system congestion
    "4.7": BounceClass.EXPIRED,  # delivery time expired
    "5.3": BounceClass.RATE_LIMIT,  # too many recipients
    "7.13": BounceClass.INACTIVE_MAILBOX,  # user account disabled
    "7.17": BounceClass.INVALID_RECIPIENT,  # mailbox owner has changed
    "7.18": BounceClass.INVALID_RECIPIENT,  # domain owner has changed
    "7.20": BounceClass.AUTHENTICATION,  # no passing DKIM signature found
    "7.21": BounceClass.AUTHENTICATION,  # no acceptable DKIM signature
    "7.22": BounceClass.AUTHENTICATION,  # no valid author-matched DKIM signature
    "7.23": BounceClass.AUTHENTICATION,  # SPF validation failed
    "7.24": BounceClass.AUTHENTICATION,  # SPF validation error
    "7.25": BounceClass.AUTHENTICATION,  # reverse DNS validation failed
    "7.26": BounceClass.AUTHENTICATION,  # multiple authentication checks failed
    "7.27": BounceClass.POLICY,  # sender address has null MX
    "7.28": BounceClass.RATE_LIMIT,  # mail flood detected
}

#: For generic or missing enhanced codes: what the text says.
WEAK_RULES: tuple[tuple[BounceClass, re.Pattern], ...] = (
    (BounceClass.DNS, _rx(r"domain (?:not found|does not exist|doesn't exist)", r"host (?:or domain name )?not found",
                          r"no such domain", r"nxdomain", r"no mx (?:record|host)")),
    (BounceClass.INVALID_RECIPIENT, _rx(
        r"user unknown", r"unknown (?:user|recipient|mailbox|address|local.?part)",
        r"no such (?:user|recipient|mailbox|address|account|person)",
        r"(?:user|mailbox|recipient|address|account)\s+(?:\S+\s+)?(?:does not|doesn't|did not) exist",
        r"(?:does not|doesn't) have an? \S+ account", r"does not exist", r"doesn't exist",
        r"not a valid (?:mailbox|recipient|user|address)", r"invalid (?:recipient|mailbox|address|user)",
        r"recipient (?:address )?rejected", r"recipient not found", r"(?:mailbox|user|address) not found",
        r"mailbox unavailable", r"no mailbox", r"unrouteable address", r"undeliverable address",
        r"not our customer", r"unknown or illegal alias", r"address rejected")),
    (BounceClass.MESSAGE, _rx(r"message (?:size|too (?:big|large))", r"too large", r"size (?:limit|exceeds)",
                              r"exceeds (?:the )?(?:maximum|size)", r"content rejected", r"attachment")),
    (BounceClass.POLICY, _rx(r"relay(?:ing)? (?:access )?(?:denied|not permitted)", r"policy", r"rejected",
                             r"blocked", r"denied", r"refused", r"prohibited", r"not permitted")),
)

_SUBJECT_FALLBACK = {"4": BounceClass.CONNECTION, "5": BounceClass.PROTOCOL, "6": BounceClass.MESSAGE,
                     "7": BounceClass.POLICY}


def bounce_class(code: int, enhanced: str, message: str) -> BounceClass:
    """Classify a non-2xx reply; see the module docstring for the order of the rules."""
    if code < 400:
        return BounceClass.NONE
    text = " ".join((message or "").split()).lower()
    for klass, pattern in STRONG_RULES:
        if pattern.search(text):
            return klass
    parts = enhanced.split(".") if enhanced else []
    subject_detail = ".".join(parts[1:3]) if len(parts) == 3 else ""
    specific = ENHANCED_TABLE.get(subject_detail)
    if specific is not None:
        return specific
    if subject_detail and parts[1] in ("4", "6", "7"):
        # Network, content and policy subjects: "Recipient address rejected: policy" under 5.7.1 is
        # policy, not an unknown user; only address/mailbox/protocol subjects defer to the text.
        return _SUBJECT_FALLBACK[parts[1]]
    for klass, pattern in WEAK_RULES:
        if pattern.search(text):
            return klass
    if subject_detail:
        return _SUBJECT_FALLBACK.get(parts[1], BounceClass.OTHER)
    if code == 421:
        return BounceClass.CONNECTION
    if code == 552:  # RFC 5321: exceeded storage allocation
        return BounceClass.MAILBOX_FULL
    return BounceClass.OTHER


def classify_reply(text: str, status: str = "") -> tuple[int, str, BounceClass]:
    """(code, enhanced code, class) of a reply line or a DSN Diagnostic-Code; `status` (a DSN's Status
    field) wins over an enhanced code found in the text. A missing code is derived from the class
    digit of the status (5 -> 550, 4 -> 450)."""
    text = text or ""
    body = re.sub(r"^\s*smtp\s*;\s*", "", text, flags=re.I)
    code = reply_code(body)
    rest = body[3:].lstrip(" -") if code is not None else body
    enhanced = status or enhanced_code(rest)
    if code is None:
        code = {"5": 550, "4": 450, "2": 250}.get(enhanced[:1], 550)
    return code, enhanced, bounce_class(code, enhanced, rest)


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


#: A delivery that keeps raising inside the relay fails at this attempt instead of retrying for days.
INTERNAL_ERROR_ATTEMPTS = 3


def internal_error(ex: Exception, attempt_no: int, mx_host: str = "") -> Outcome:
    """The outcome of an exception while sending one delivery: retried like a deferral (it may have
    been passing), then failed for good, so one poison message never cycles until it expires."""
    text = f"internal error: {type(ex).__name__}: {ex}"[:500]
    if attempt_no >= INTERNAL_ERROR_ATTEMPTS:
        return Outcome(Kind.FAILED, 554, text, enhanced_code="5.3.0", bounce_class=BounceClass.OTHER,
                       mx_host=mx_host, extra={"reason": "generic"},
                       description=f"the relay could not send this message (attempt {attempt_no}); not retried")
    return Outcome(Kind.RETRY, 451, text, enhanced_code="4.3.0", bounce_class=BounceClass.OTHER, mx_host=mx_host,
                   description=f"the relay could not send this message; retried (at most {INTERNAL_ERROR_ATTEMPTS}"
                               " attempts)")


# Mailgun's codes for sends to suppressed addresses (605 previously bounced, 607 complained).
SUPPRESSION_CODES = {"suppress-bounce": 605, "suppress-unsubscribe": 606, "suppress-complaint": 607}


def suppressed(reason: str) -> Outcome:
    descriptions = {"suppress-bounce": "Not delivering to previously bounced address",
                    "suppress-unsubscribe": "Not delivering to unsubscribed address",
                    "suppress-complaint": "Not delivering to a user who marked your messages as spam"}
    text = descriptions.get(reason, "Not delivering to suppressed address")
    return Outcome(Kind.FAILED, SUPPRESSION_CODES.get(reason, 605), text, description=text,
                   extra={"reason": reason})
