"""Look a domain's published DNS records up and compare them with what Envoi asked for.

Verification is the proof that a customer controls a domain: the DKIM record carries the public key
of this domain row only (another account's row of the same name has its own key), so finding it in
DNS shows that whoever added the row can publish in the domain's zone. Each record comes back with
Mailgun's `valid`: "valid" (found as asked), "invalid" (the zone answered without it) or "unknown"
(no answer: timeout, SERVFAIL; try again later).
"""

from __future__ import annotations

import dns.exception
import dns.resolver

# Seconds per lookup (retries included): a verification makes up to six, in an API request.
LOOKUP_TIMEOUT = 3.0


class _Unknown(Exception):
    """The lookup got no usable answer; the record's state is unknown."""


def check(records: list[dict], nameserver: tuple[str, int] | None = None,
          timeout: float = LOOKUP_TIMEOUT) -> list[dict]:
    """Copies of Mailgun-shaped records ({record_type, name, value, ...}) with `valid` and `cached`
    (the values found) filled in from real lookups."""
    resolver = dns.resolver.Resolver(configure=nameserver is None)
    if nameserver is not None:
        resolver.nameservers, resolver.port = [nameserver[0]], nameserver[1]
    resolver.lifetime = timeout
    resolver.timeout = min(1.0, timeout)  # per try: a lost UDP packet is asked again
    resolver.use_edns(0, 0, 1232)  # DKIM keys are long TXT records

    def lookup(name: str, rdtype: str) -> list[str]:
        try:
            answer = resolver.resolve(name, rdtype, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.DNSException, OSError) as ex:  # timeout, SERVFAIL, unreachable
            raise _Unknown(str(ex)) from ex
        if rdtype == "TXT":
            return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
        if rdtype == "MX":
            return [r.exchange.to_text(omit_final_dot=True).lower() for r in answer]
        return [r.to_text().rstrip(".").lower() for r in answer]

    out = []
    for record in records:
        found: list[str] = []
        try:
            found = lookup(record["name"], record["record_type"])
            valid = "valid" if _matches(record, found) else "invalid"
        except _Unknown:
            valid = "unknown"
        out.append({**record, "valid": valid, "cached": found})
    return out


def _matches(record: dict, found: list[str]) -> bool:
    kind, want = record["record_type"], record["value"]
    if kind == "TXT" and want.startswith("v=DMARC1"):
        # Ours is a suggestion: any DMARC policy the customer publishes is theirs to choose.
        return any(v.replace(" ", "").upper().startswith("V=DMARC1;") or v.strip().upper() == "V=DMARC1"
                   for v in found)
    if kind == "TXT" and want.startswith("v=spf1"):
        # The customer's SPF may list other senders too: ours must be among its mechanisms.
        needed = {t for t in want.split() if t.startswith("include:")}
        return any(v.startswith("v=spf1") and needed <= set(v.split()) for v in found)
    if kind == "TXT" and "p=" in want:
        key = _tag(want, "p")
        return any(_tag(v, "p") == key for v in found)
    return want.rstrip(".").lower() in found


def _tag(value: str, name: str) -> str | None:
    """A tag of a DKIM key record (RFC 6376 3.2: tag=value pairs, whitespace not significant)."""
    for part in value.split(";"):
        key, _, tag_value = part.partition("=")
        if key.strip() == name:
            return "".join(tag_value.split())
    return None
