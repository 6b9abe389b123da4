"""The dispatcher's HTTP client: aiohttp keep-alive pools, with the SSRF guard at dial time.

Every host name is resolved by `GuardedResolver`, which applies ssrf.judge (the same policy as the
synchronous client) to the answer and hands aiohttp only vetted addresses: the connection goes to an
address that was checked, so DNS rebinding cannot redirect it. aiohttp dials literal IP hosts without
asking a resolver, so those are judged before the request. Redirects are never followed; proxies
from the environment are ignored; a reply is read up to 64 KB (to keep the connection for the next
request) and only its first 1 KB kept, a longer one closes the connection. New connections to one
endpoint open at most OPENING at a time (PacedConnector): a burst of claimed rows otherwise overflowed
the endpoint's listen queue. aiohttp is used nowhere else (import contract in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from envoi.webhooks import ssrf

log = logging.getLogger("envoi.webhooks.client")
DRAIN = 65536  # read a reply up to this to keep its connection alive; longer ones close it
# New connections one process opens to one endpoint at a time, each counted until its first answer (at
# most OPEN_HOLD seconds): a connection not yet answered may still wait in the endpoint's accept queue,
# so this many stay below its listen backlog (128 is common; 2 processes x 32). Without it a burst of
# claimed rows opened hundreds of connections at once, the queue overflowed, the dropped SYNs were
# retried after 1 s, then 3 s: the other tenants of that host waited seconds (bench/webhook_dispatch.py).
OPENING = 32
OPEN_HOLD = 0.5
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


class _Permit:
    """One of an endpoint's OPENING slots, held by a new connection until its first answer."""

    __slots__ = ("gate", "permits", "task", "timer")

    def __init__(self, gate: asyncio.Semaphore, permits: dict, task: asyncio.Task | None, hold: float):
        self.gate, self.permits, self.task = gate, permits, task
        self.timer = asyncio.get_running_loop().call_later(hold, self.release)

    def release(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.gate.release()
            if self.permits.get(self.task) is self:
                del self.permits[self.task]


class PacedConnector(aiohttp.TCPConnector):
    """TCPConnector that opens at most `opening` new connections per endpoint at a time (the rest of a
    burst waits for a slot, while requests that find a pooled connection go at once)."""

    def __init__(self, *args, opening: int = OPENING, hold: float = OPEN_HOLD, **kwargs):
        super().__init__(*args, **kwargs)
        self._opening_max, self._hold = opening, hold
        self._gates: dict[tuple, asyncio.Semaphore] = {}
        self.permits: dict[asyncio.Task | None, _Permit] = {}  # the task whose request opened it -> its slot

    async def _create_connection(self, req, traces, timeout):  # aiohttp's hook for a new connection (3.x)
        key = (req.host, req.port)
        gate = self._gates.get(key)
        if gate is None:
            if len(self._gates) > 10_000:  # stay bounded: a gate in use still releases into its own object
                self._gates = {k: g for k, g in self._gates.items() if g.locked()}
            gate = self._gates[key] = asyncio.Semaphore(self._opening_max)
        await gate.acquire()
        task = asyncio.current_task()
        permit = _Permit(gate, self.permits, task, self._hold)
        try:
            proto = await super()._create_connection(req, traces, timeout)
        except BaseException:
            permit.release()
            raise
        self.permits[task] = permit
        return proto

    def answered(self) -> None:
        """The current task's request has its answer (or its end): its new connection's slot is free."""
        if self.permits and (permit := self.permits.get(asyncio.current_task())) is not None:
            permit.release()


class Client:
    """One per dispatcher process: `async with Client(allow, timeout, limit) as http: await http.post(...)`."""

    def __init__(self, allow: ssrf.Allow, timeout: float, limit: int, trace: float = 0.0):
        self.allow = allow
        self.timeout = timeout
        self.limit = limit
        self.trace = trace  # > 0: log each request slower than this, with its stages (ENVOI_WEBHOOK_TRACE)
        self._parsed: dict[str, tuple] = {}
        self.session: aiohttp.ClientSession | None = None
        self.connector: PacedConnector | None = None

    async def __aenter__(self) -> Client:
        self.connector = connector = PacedConnector(resolver=GuardedResolver(self.allow), limit=self.limit,
                                                    limit_per_host=0, ttl_dns_cache=60, keepalive_timeout=30)
        # PERF: the fixed headers are the session's (merged in C-backed multidicts, not rebuilt per request);
        # no cookie jar: an endpoint's cookies are never kept or sent on (and filtering them cost each request).
        self.session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False,
                                             timeout=aiohttp.ClientTimeout(total=self.timeout),
                                             skip_auto_headers=("Accept-Encoding",),
                                             cookie_jar=aiohttp.DummyCookieJar(), headers=HEADERS,
                                             trace_configs=[_stages()] if self.trace else None)
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
        if self.trace:
            return await self._traced(started, target, body, auth, done)
        return await self._post(target, body, auth, done)

    async def _traced(self, started: float, target: URL, body: bytes, auth: dict | None, done) -> ssrf.Response:
        stages = {"start": started}
        response = await self._post(target, body, auth, done, stages)
        took = time.monotonic() - started
        if took > self.trace:
            marks = sorted(stages.items(), key=lambda kv: kv[1])
            log.warning("webhook request to %s:%s took %.0f ms: %s (status %s, error %s)", target.host, target.port,
                        took * 1000,
                        ", ".join(f"{name} +{(at - started) * 1000:.0f}" for name, at in marks[1:]),
                        response.status, response.error)
        return response

    async def _post(self, target: URL, body: bytes, auth: dict | None, done, stages: dict | None = None
                    ) -> ssrf.Response:
        try:
            async with self.session.post(target, data=body, headers=auth, allow_redirects=False,
                                         trace_request_ctx=stages) as resp:
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
        finally:
            self.connector.answered()


def _stages() -> aiohttp.TraceConfig:
    """Timestamps of a request's stages into its trace_request_ctx dict (ENVOI_WEBHOOK_TRACE only: the
    signals cost every request)."""
    config = aiohttp.TraceConfig()

    def mark(name: str):
        async def on(session, context, params) -> None:
            if context.trace_request_ctx is not None:
                context.trace_request_ctx.setdefault(name, time.monotonic())
        return on

    config.on_request_start.append(mark("request"))
    config.on_connection_queued_start.append(mark("slot-wait"))
    config.on_connection_queued_end.append(mark("slot-got"))
    config.on_connection_create_start.append(mark("connect"))
    config.on_connection_create_end.append(mark("connected"))
    config.on_connection_reuseconn.append(mark("reused"))
    config.on_request_headers_sent.append(mark("sent"))
    config.on_request_end.append(mark("answered"))
    config.on_request_exception.append(mark("failed"))
    return config
