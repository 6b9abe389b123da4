"""SSRF guard and the pinned HTTP client webhooks are sent with.

A webhook URL is checked when it is saved and again at every dial: the host is resolved, every
address must be public (not loopback, RFC 1918, link-local/metadata, CGNAT, ULA, reserved,
multicast; IPv4-mapped/6to4/Teredo addresses are judged by the IPv4 address inside), and the
connection goes to the vetted address itself, so a DNS answer that changes between check and
connect (rebinding) cannot redirect it. Redirects are never followed. Numeric hosts must be
canonical dotted quads (no `2130706433`, `0x7f.1`, `0177.0.0.1`). The operator may allow
networks or hosts anyway (ENVOI_WEBHOOK_ALLOW).
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import re
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

MAX_URL = 2048
EXCERPT = 1024
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.I)


class UnsafeURL(ValueError):
    """The URL is malformed or points somewhere webhooks may not go."""


@dataclass(frozen=True)
class Allow:
    networks: tuple
    hosts: frozenset

    @classmethod
    def parse(cls, entries) -> Allow:
        networks, hosts = [], set()
        for entry in entries or ():
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def permits(self, ip) -> bool:
        return any(ip.version == n.version and ip in n for n in self.networks)


def blocked(ip) -> bool:
    """True for any address that is not plainly public unicast."""
    if ip.version == 6:
        for inner in (ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None):
            if inner is not None:
                return blocked(inner)
    return not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified


def parse(url: str) -> tuple[str, str, int, str, str | None]:
    """(scheme, host, port, path+query, basic auth header or None), or UnsafeURL."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise UnsafeURL("url is missing or longer than 2048 characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise UnsafeURL("url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as ex:
        raise UnsafeURL(f"url is not valid: {ex}") from ex
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("url must start with http:// or https://")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeURL("url has no host")
    if all(_NUMERIC_LABEL.match(label) for label in host.split(".")):  # what inet_aton would take
        try:
            canonical = str(ipaddress.IPv4Address(host))
        except ValueError:
            canonical = None
        if canonical != host:
            raise UnsafeURL("url host is not a canonical IP address or host name")
    auth = None
    if parts.username is not None:
        creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(creds.encode()).decode()
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, host.lower(), port or (443 if parts.scheme == "https" else 80), path, auth


def vet(host: str, port: int, allow: Allow) -> list[str]:
    """Resolve `host` and return its addresses if all of them may be dialled; else UnsafeURL."""
    named = literal(host)
    if named is not None:
        addresses = [named]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as ex:
            raise UnsafeURL(f"url host {host} does not resolve") from ex
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    return judge(host, addresses, allow)


def literal(host: str):
    """The IP address `host` names literally, or None for a host name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def judge(host: str, addresses: list, allow: Allow) -> list[str]:
    """The policy, given what `host` resolved to (ip_address objects): all of them may be dialled, or
    UnsafeURL. The synchronous client (vet) and the dispatcher's resolver (webhooks.client) share it."""
    if not addresses:
        raise UnsafeURL(f"url host {host} does not resolve")
    if host in allow.hosts:
        return [str(a) for a in addresses]
    for address in addresses:
        if blocked(address) and not allow.permits(address):
            raise UnsafeURL(f"url host {host} resolves to a private or reserved address ({address})")
    return [str(a) for a in addresses]


def check(url: str, allow: Allow) -> str:
    """Validate a URL for saving; return it unchanged."""
    _, host, port, _, _ = parse(url)
    vet(host, port, allow)
    return url


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host, port, address, timeout):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host, port, address, timeout):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


@dataclass
class Response:
    status: int | None
    excerpt: str
    latency_ms: int
    error: str | None = None


def post(url: str, body: bytes, allow: Allow, timeout: float, headers: dict | None = None) -> Response:
    """POST `body` to `url` through the guard; never raises for network trouble, never follows redirects."""
    started = time.monotonic()

    def done(status, excerpt="", error=None) -> Response:
        return Response(status, excerpt, int((time.monotonic() - started) * 1000), error)

    try:
        scheme, host, port, path, auth = parse(url)
        addresses = vet(host, port, allow)
    except UnsafeURL as ex:
        return done(None, error=f"refused: {ex}")
    conn_class = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
    send_headers = {"Content-Type": "application/json", "User-Agent": "envoi-webhooks/1",
                    "Connection": "close", **(headers or {})}
    if auth:
        send_headers["Authorization"] = auth
    last_error = "no address"
    for address in addresses[:2]:
        conn = conn_class(host, port, address, timeout)
        try:
            conn.request("POST", path, body=body, headers=send_headers)
            resp = conn.getresponse()
            data = resp.read(EXCERPT)
            return done(resp.status, data.decode("utf-8", "replace"))
        except (OSError, http.client.HTTPException, ssl.SSLError) as ex:
            last_error = f"{type(ex).__name__}: {ex}"
            if isinstance(ex, TimeoutError | socket.timeout):
                break  # don't spend a second timeout on another address
        finally:
            conn.close()
    return done(None, error=last_error[:500])
