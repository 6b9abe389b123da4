"""Who a message may claim to be from: the one rule for the HTTP API and SMTP submission.

A message's From addresses (and SMTP's MAIL FROM) must be at the sending domain or one of its
subdomains: the domain whose DKIM key signs it and whose DNS proved the sender controls it. So a
message From a foreign domain is refused on both edges with the same error, instead of going out
signed by one domain while showing another (which is how a leaked key or login becomes spoofing).
Mailgun accepts any From and leaves alignment to DMARC; `ENVOI_ALLOW_FOREIGN_FROM=yes` does that.
"""

from __future__ import annotations

import email.policy
import functools
from email.message import Message
from email.utils import getaddresses

from envoi.mta import idn
from envoi.mta.errors import InvalidMessage, NotAllowed


def allowed(sending_domain: str, address: str) -> bool:
    """address is at sending_domain or a subdomain of it."""
    own = sending_domain.lower().rstrip(".")
    domain = address.rpartition("@")[2].lower().rstrip(".")
    try:  # domains are registered in A-labels; addresses are normalised to U-labels
        domain = idn.ascii_domain(domain)
    except idn.AddressError:
        return False
    return bool(own) and (domain == own or domain.endswith("." + own))


def check(sending_domain: str, addresses: list[str]) -> None:
    """NotAllowed for the first From address outside the sending domain."""
    for address in addresses:
        if not allowed(sending_domain, address):
            raise NotAllowed(f"From address {address} is not allowed for the domain {sending_domain}")


def from_addresses(head: Message) -> list[str]:
    """The From addresses, read by both of CPython's address parsers, which must agree.

    Parser differentials are how a From is made to show one domain to a mail reader and another to
    a check like ours (CVE-2023-27043): anything the two parsers read differently is refused.
    """
    # Both policies split the head into the same raw fields (header_source_parse is shared); they
    # differ in how a field is read, so both readings start from these raw values.
    return list(_agreed_from(tuple(value for name, value in head.raw_items() if name.lower() == "from")))


@functools.lru_cache(maxsize=4096)  # an application sends from the same few From fields; ~150 µs each
def _agreed_from(raw_values: tuple[str, ...]) -> tuple[str, ...]:
    try:  # UTF-8 mixed with undecodable bytes (SMTPUTF8) fails compat32's str() with UnicodeEncodeError
        legacy = [str(email.policy.compat32.header_fetch_parse("From", value)) for value in raw_values]
    except ValueError as ex:
        raise InvalidMessage("From header could not be parsed") from ex
    addresses = tuple(addr for _, addr in getaddresses(legacy) if addr)
    if not addresses:
        raise InvalidMessage("Message has no From header")
    try:
        modern = [email.policy.default.header_fetch_parse("From", value) for value in raw_values]
        strict = [a.addr_spec for h in modern for a in h.addresses]
    except (ValueError, IndexError, AttributeError, TypeError) as ex:
        raise InvalidMessage("From header could not be parsed") from ex
    if sorted(a.lower() for a in strict) != sorted(a.lower() for a in addresses):
        raise InvalidMessage("From header is ambiguous")
    return addresses
