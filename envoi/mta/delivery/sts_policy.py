"""MTA-STS (RFC 8461) records and policies: parsing and MX matching. Pure functions, no I/O.

A recipient domain announces a policy with a TXT record at `_mta-sts.<domain>` ("v=STSv1; id=...;")
and serves it at `https://mta-sts.<domain>/.well-known/mta-sts.txt`:

    version: STSv1
    mode: enforce
    mx: mail.example.com
    mx: *.example.net
    max_age: 604800

Written here rather than taken from PyPI: the one maintained implementation (postfix-mta-sts-resolver)
is a Postfix daemon whose fetch runs through aiohttp and its own resolver, so it would bypass the
relay's DNS resolver and SSRF guard and bring aiohttp, aiodns, aiosqlite and PyYAML for ~80 lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

MAX_AGE_LIMIT = 31_557_600  # RFC 8461 3.2: at most one year
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class Mode(StrEnum):
    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


class PolicyError(ValueError):
    """The record or policy is not valid MTA-STS (reported as sts-policy-invalid)."""


@dataclass(frozen=True)
class Policy:
    mode: Mode
    mx: tuple[str, ...]  # patterns, lower case: "mail.example.com" or "*.example.com"
    max_age: int
    text: str  # the policy as served, for TLS-RPT's policy-string

    def matches(self, host: str) -> bool:
        """True if the MX host name is allowed (RFC 8461 4.1: a wildcard stands for one whole label)."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                head, _, rest = host.partition(".")
                if head and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False

    def lines(self) -> list[str]:
        """The policy as TLS-RPT's policy-string: one entry per line, without line ends."""
        return [line.strip() for line in self.text.splitlines() if line.strip()]


def record_id(texts: list[str]) -> str | None:
    """The policy id from the TXT records of `_mta-sts.<domain>`, or None when the domain has no
    usable record (none, several, or an invalid one: RFC 8461 3.1 says to assume no policy)."""
    records = [t for t in texts if t.startswith("v=STSv1")]
    if len(records) != 1:
        return None
    fields: dict[str, str] = {}
    for part in records[0].split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            return None
        fields.setdefault(key.strip(), value.strip())
    if fields.get("v") != "STSv1" or not _ID.match(fields.get("id", "")):
        return None
    return fields["id"]


def parse(text: str) -> Policy:
    """A policy body (RFC 8461 3.2); PolicyError if it is not one."""
    values: dict[str, str] = {}
    mx: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"line without a key: {line[:80]!r}")
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(_pattern(value))
        else:
            values.setdefault(key, value)  # unknown keys are ignored (RFC 8461 3.2)
    if values.get("version") != "STSv1":
        raise PolicyError("version is not STSv1")
    try:
        mode = Mode(values.get("mode", ""))
    except ValueError as ex:
        raise PolicyError(f"mode {values.get('mode', '')!r} is not enforce, testing or none") from ex
    age = values.get("max_age", "")
    if not age.isdigit() or len(age) > 10:
        raise PolicyError("max_age is missing or not a number of seconds")
    if mode is not Mode.NONE and not mx:
        raise PolicyError("no mx pattern")
    return Policy(mode, tuple(mx), min(int(age), MAX_AGE_LIMIT), text)


def _pattern(value: str) -> str:
    pattern = value.lower().rstrip(".")
    labels = pattern.split(".")
    if labels and labels[0] == "*":
        labels = labels[1:]
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise PolicyError(f"mx {value[:80]!r} is not a host name or *.domain pattern")
    return pattern
