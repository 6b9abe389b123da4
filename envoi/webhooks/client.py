"""The dispatcher's HTTP client: aiohttp keep-alive pools, with the SSRF guard at dial time.

Every host name is resolved by `GuardedResolver`, which applies ssrf.judge (the same policy as the
synchronous client) to the answer and hands aiohttp only vetted addresses: the connection goes to an
address that was checked, so DNS rebinding cannot redirect it. aiohttp dials literal IP hosts without
asking a resolver, so those are judged before the request. Redirects are never followed; proxies
from the environment are ignored; a reply is read up to 64 KB (to keep the connection for the next
request) and only its first 1 KB kept, a longer one closes the connection. aiohttp is used nowhere
else (import contract in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from envoi.webhooks import ssrf

DRAIN = 65536  # read a reply up to this to keep its connection alive; longer ones close it
HEADERS = {"Content-Type": "application/json", "User-Agent": "envoi-webhooks/1"}


class Refused(OSError):
    """The resolver refused the host's addresses (SSRF guard)."""


class GuardedResolver(AbstractResolver):
    def __init__(self, allow: ssrf.Allow):
        self.allow = allow

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        except (socket.gaierror, UnicodeError) as ex:
            raise Refused(f"url host {host} does not resolve") from ex
        found = {}
        for fam, _, proto, _, sockaddr in infos:
            found.setdefault(ipaddress.ip_address(sockaddr[0].split("%")[0]), (fam, proto))
        try:
            ssrf.judge(host.lower().rstrip("."), list(found), self.allow)
        except ssrf.UnsafeURL as ex:
            raise Refused(str(ex)) from ex
        return [{"hostname": host, "host": str(ip), "port": port, "family": fam, "proto": proto,
                 "flags": socket.AI_NUMERICHOST} for ip, (fam, proto) in found.items()]

    async def close(self) -> None:
        pass


class Client:
    """One per dispatcher process: `async with Client(allow, timeout, limit) as http: await http.post(...)`."""

    def __init__(self, allow: ssrf.Allow, timeout: float, limit: int):
        self.allow = allow
        self.timeout = timeout
        self.limit = limit
        self._parsed: dict[str, tuple] = {}
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.allow), limit=self.limit, limit_per_host=0,
                                         ttl_dns_cache=60, keepalive_timeout=30)
        # PERF: the fixed headers are the session's (merged in C-backed multidicts, not rebuilt per request);
        # no cookie jar: an endpoint's cookies are never kept or sent on (and filtering them cost each request).
        self.session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False,
                                             timeout=aiohttp.ClientTimeout(total=self.timeout),
                                             skip_auto_headers=("Accept-Encoding",),
                                             cookie_jar=aiohttp.DummyCookieJar(), headers=HEADERS)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()

    def _target(self, url: str) -> tuple[URL, dict | None]:
        """(URL without credentials, as yarl's URL, parsed once; {"Authorization": ...} or None); UnsafeURL
        for a refused one."""
        parsed = self._parsed.get(url)
        if parsed is None:
            scheme, host, port, path, auth = ssrf.parse(url)
            named = ssrf.literal(host)
            if named is not None:
                # aiohttp dials literal addresses without the resolver: judged here. The verdict depends on
                # the address and this client's allow list only, so it is cached with the URL (a refused
                # one is not cached: it is judged, and refused, again).
                ssrf.vet(host, port, self.allow)
            bracketed = f"[{host}]" if named is not None and named.version == 6 else host
            parsed = (URL(f"{scheme}://{bracketed}:{port}{path}"), {"Authorization": auth} if auth else None)
            if len(self._parsed) > 10_000:
                self._parsed.clear()
            self._parsed[url] = parsed
        return parsed

    async def post(self, url: str, body: bytes) -> ssrf.Response:
        """POST through the guard; never raises for network trouble, never follows redirects."""
        started = time.monotonic()

        def done(status, excerpt="", error=None) -> ssrf.Response:
            return ssrf.Response(status, excerpt, int((time.monotonic() - started) * 1000), error)

        try:
            target, auth = self._target(url)
        except ssrf.UnsafeURL as ex:
            return done(None, error=f"refused: {ex}")
        try:
            async with self.session.post(target, data=body, headers=auth, allow_redirects=False) as resp:
                if resp.content_length is not None and resp.content_length <= DRAIN:
                    data = await resp.read()
                else:
                    data = await resp.content.read(ssrf.EXCERPT)
                    resp.close()  # don't read an unbounded reply: drop this connection instead
                return done(resp.status, data[:ssrf.EXCERPT].decode("utf-8", "replace"))
        except aiohttp.ClientConnectorError as ex:
            if isinstance(ex.os_error, Refused):
                return done(None, error=f"refused: {ex.os_error}")
            return done(None, error=f"{type(ex).__name__}: {ex}"[:500])
        except TimeoutError:
            return done(None, error=f"timeout after {self.timeout:g} s")
        except (aiohttp.ClientError, OSError, ValueError) as ex:
            return done(None, error=f"{type(ex).__name__}: {ex}"[:500])
