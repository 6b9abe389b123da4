"""Internationalised addresses on the wire: IDN domains as A-labels; UTF-8 local parts need SMTPUTF8.

Addresses are kept as intake normalised them (email_validator: NFC, domains in U-labels). SMTP
envelopes and DNS carry domains as A-labels (IDNA 2008 with the UTS 46 mapping, as email_validator
checks them), so a server without SMTPUTF8 still takes mail for `user@bücher.example`; only a UTF-8
local part needs the receiving server to offer SMTPUTF8 (RFC 6531).
"""

from __future__ import annotations

import functools

import idna


class AddressError(ValueError):
    """An address or domain that cannot be written on the wire."""


def ascii_domain(domain: str) -> str:
    """The domain as DNS and SMTP carry it (A-labels). ASCII domains are returned as they are."""
    if domain.isascii():
        return domain
    return _a_labels(domain)


@functools.lru_cache(maxsize=4096)
def _a_labels(domain: str) -> str:
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as ex:
        raise AddressError(f"{domain!r} is not a valid internationalised domain name ({ex})") from ex


def wire_address(address: str) -> tuple[str, bool]:
    """(the address with its domain in A-labels, whether its local part needs SMTPUTF8)."""
    if address.isascii() and address.isprintable():  # the everyday case: two C-speed checks
        return address, False
    if not address.isprintable():  # control, format or surrogate characters: never on the wire
        raise AddressError(f"{address!r} contains a character that cannot be sent")
    local, at, domain = address.rpartition("@")
    return f"{local}{at}{ascii_domain(domain)}", not local.isascii()
