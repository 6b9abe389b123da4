"""MX and address resolution for delivery, with our own TTL cache (the one place that uses dnspython).

Errors are split the way delivery needs them: DnsTemporaryError means "try again later" (SERVFAIL,
timeout, unreachable server) and must never turn into a bounce; DnsPermanentError carries the
enhanced status code for the bounce (NXDOMAIN -> 5.1.2, null MX -> 5.1.10).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections import OrderedDict
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdata
import dns.rdatatype
import dns.resolver

from envoi.mta import idn


@dataclass(frozen=True)
class MxHost:
    preference: int
    host: str  # lower case, no trailing dot


class DnsTemporaryError(Exception):
    """The answer could not be had right now: defer, never bounce."""


class DnsPermanentError(Exception):
    """The domain definitely cannot receive mail."""

    def __init__(self, enhanced_code: str, description: str):
        super().__init__(f"{enhanced_code} {description}")
        self.enhanced_code = enhanced_code
        self.description = description


class MxResolver:
    """Resolves MX, A/AAAA and TXT records; answers are cached by TTL, capped at max_ttl.

    NXDOMAIN and NODATA are cached for negative_ttl; temporary failures are not cached, but
    concurrent lookups of the same record share one query. Use from one event loop.
    """

    def __init__(
        self,
        nameserver: tuple[str, int] | None = None,
        timeout: float = 5.0,
        max_cache: int = 100_000,
        *,
        max_ttl: float = 3600.0,
        negative_ttl: float = 300.0,
    ):
        if nameserver is None:
            resolver = dns.asyncresolver.Resolver()  # the system's, from /etc/resolv.conf
        else:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [nameserver[0]]
            resolver.port = nameserver[1]
        resolver.lifetime = timeout  # the whole lookup, retries included
        resolver.timeout = min(2.0, timeout)  # per try: a lost UDP packet is asked again
        resolver.use_edns(0, 0, 1232)  # long TXT (DKIM keys) without falling back to TCP
        self._resolver = resolver
        self._max_cache = max_cache
        self._max_ttl = max_ttl
        self._negative_ttl = negative_ttl
        # (name as text, type) -> (expires at, rdatas, or None for NXDOMAIN). Text keys: hashing a
        # dns.name.Name costs more than the rest of a cache hit.
        self._cache: OrderedDict[tuple[str, int], tuple[float, list | None]] = OrderedDict()
        self._inflight: dict[tuple[str, int], asyncio.Task] = {}
        # the names asked, as given -> (parsed, canonical text): parsing (IDNA) once per name, not per message
        self._names: dict[str, tuple[dns.name.Name, str]] = {}

    def _name(self, domain: str) -> tuple[dns.name.Name, str]:
        parsed = self._names.get(domain)
        if parsed is None:
            name = _parse(domain)
            if len(self._names) >= self._max_cache:
                self._names.clear()
            parsed = self._names[domain] = (name, _text(name))
        return parsed

    async def mx(self, domain: str) -> list[MxHost]:
        """Mail hosts for domain, best first (equal preferences in random order).

        Without MX records a domain with an address is its own mail host (RFC 5321 5.1).
        """
        parsed = self._name(domain)
        name = parsed[0]
        records = await self._lookup(parsed, dns.rdatatype.MX)
        if records is None:
            raise DnsPermanentError("5.1.2", f"{_text(name)}: no such domain")
        if records:
            hosts = [MxHost(r.preference, _text(r.exchange)) for r in records if r.exchange != dns.name.root]
            if not hosts:  # RFC 7505: "MX 0 ." says the domain accepts no mail
                raise DnsPermanentError("5.1.10", f"{_text(name)}: domain accepts no mail (null MX)")
            random.shuffle(hosts)
            hosts.sort(key=lambda h: h.preference)  # stable: the shuffle survives among equals
            return hosts
        if await self.addresses(_text(name)):
            return [MxHost(0, _text(name))]
        raise DnsPermanentError("5.1.2", f"{_text(name)}: no MX and no address records")

    async def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of host; [] when it definitely has none. A literal IP is returned as is."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        parsed = self._name(host)
        # Ask both at once: a dropped query costs the timeout once, not twice.
        results = await asyncio.gather(
            self._lookup(parsed, dns.rdatatype.A),
            self._lookup(parsed, dns.rdatatype.AAAA),
            return_exceptions=True,
        )
        found: list[str] = []
        failure: DnsTemporaryError | None = None
        for result in results:
            if isinstance(result, DnsTemporaryError):
                failure = result
            elif isinstance(result, BaseException):
                raise result
            elif result:
                found += [r.address for r in result]
        # One family is enough to deliver; a failure only matters when nothing was found.
        if not found and failure is not None:
            raise failure
        return found

    async def txt(self, name: str) -> list[str]:
        """TXT records of name, each with its strings joined (a DKIM key is split into 255-byte strings)."""
        records = await self._lookup(self._name(name), dns.rdatatype.TXT)
        return [b"".join(r.strings).decode("utf-8", "replace") for r in records or ()]

    async def _lookup(self, parsed: tuple[dns.name.Name, str], rdtype: int) -> list | None:
        """Cached rdatas ([] for NODATA, None for NXDOMAIN); raises DnsTemporaryError."""
        key = (parsed[1], rdtype)
        entry = self._cache.get(key)
        if entry is not None:
            if entry[0] > time.monotonic():
                self._cache.move_to_end(key)
                return entry[1]
            del self._cache[key]

        task = self._inflight.get(key)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(self._query(parsed[0], rdtype, key))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        # shield: one caller giving up must not cancel the query for the others
        return await asyncio.shield(task)

    def _done(self, key: tuple[str, int], task: asyncio.Task) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # mark as retrieved even if every waiter was cancelled

    async def _query(self, name: dns.name.Name, rdtype: int, key: tuple[str, int]) -> list | None:
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            self._store(key, None, self._negative_ttl)
            return None
        except dns.resolver.LifetimeTimeout as e:
            raise DnsTemporaryError(f"{_text(name)} {dns.rdatatype.to_text(rdtype)}: DNS timeout") from e
        except dns.resolver.NoNameservers as e:  # SERVFAIL/REFUSED from every server
            raise DnsTemporaryError(
                f"{_text(name)} {dns.rdatatype.to_text(rdtype)}: DNS server failure"
            ) from e
        except dns.exception.DNSException as e:
            raise DnsTemporaryError(f"{_text(name)} {dns.rdatatype.to_text(rdtype)}: {e}") from e
        if answer.rrset is None:
            self._store(key, [], self._negative_ttl)
            return []
        records = list(answer.rrset)
        # answer.expiration is the smallest TTL along any CNAME chain
        self._store(key, records, min(answer.expiration - time.time(), self._max_ttl))
        return records

    def _store(self, key: tuple[str, int], value: list | None, ttl: float) -> None:
        if ttl <= 0:
            return
        self._cache[key] = (time.monotonic() + ttl, value)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_cache:
            self._cache.popitem(last=False)


def _parse(domain: str) -> dns.name.Name:
    text = domain.strip().rstrip(".")
    if not text:
        raise DnsPermanentError("5.1.2", "empty domain name")
    try:
        # A-labels by IDNA 2008 (as the envelope and intake's validation have them): dnspython alone
        # would apply IDNA 2003, which turns "straße" into another domain ("strasse").
        return dns.name.from_text(idn.ascii_domain(text), origin=dns.name.root)
    except (dns.exception.DNSException, UnicodeError, idn.AddressError) as e:
        raise DnsPermanentError("5.1.2", f"{domain!r}: not a valid domain name ({e})") from e


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()
