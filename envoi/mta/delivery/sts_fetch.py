"""Fetching an MTA-STS policy over HTTPS (RFC 8461 3.3), through the relay's resolver and the SSRF guard.

`https://mta-sts.<domain>/.well-known/mta-sts.txt`: the host is resolved with the relay's resolver,
every address is vetted as webhook targets are (no loopback, private, link-local, reserved address
unless ENVOI_MTA_STS_ALLOW permits it) and the connection goes to the vetted address, so a rebinding
answer cannot redirect it. The certificate must be valid for the host name (same trust store as MX
certificates). Only a 200 with a text/plain body of at most 64 KiB counts; redirects are not followed
(RFC 8461 3.3); the whole fetch is bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import socket
import ssl
import time

from envoi.mta.delivery.mx import DnsPermanentError, DnsTemporaryError, MxResolver
from envoi.webhooks.ssrf import Allow, blocked

MAX_POLICY_BYTES = 64 * 1024
PATH = "/.well-known/mta-sts.txt"


class FetchError(Exception):
    """The policy could not be had; `result_type` is its RFC 8460 name."""

    def __init__(self, result_type: str, message: str):
        super().__init__(message)
        self.result_type = result_type  # sts-policy-fetch-error | sts-webpki-invalid


class PolicyFetcher:
    def __init__(self, resolver: MxResolver, context: ssl.SSLContext, *, allow: Allow, port: int = 443,
                 timeout: float = 10.0):
        self.resolver = resolver
        self.context = context
        self.allow = allow
        self.port = port
        self.timeout = timeout
        self.fetches = 0  # policies asked over HTTPS (tests assert caching with it)

    async def fetch(self, domain: str) -> str:
        """The policy text of `domain`, or FetchError."""
        host = f"mta-sts.{domain}"
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    addresses = await self.resolver.addresses(host)
                except (DnsTemporaryError, DnsPermanentError) as ex:
                    raise FetchError("sts-policy-fetch-error", f"{host}: {ex}") from ex
                addresses = self._vetted(host, addresses)
                self.fetches += 1
                deadline = time.monotonic() + self.timeout
                return await asyncio.to_thread(self._get, host, addresses[0], deadline)
        except TimeoutError as ex:
            raise FetchError("sts-policy-fetch-error", f"{host}: timed out after {self.timeout:g}s") from ex

    def _vetted(self, host: str, addresses: list[str]) -> list[str]:
        if not addresses:
            raise FetchError("sts-policy-fetch-error", f"{host} has no address")
        if host in self.allow.hosts:
            return addresses
        for text in addresses:
            address = ipaddress.ip_address(text)
            if blocked(address) and not self.allow.permits(address):
                raise FetchError("sts-policy-fetch-error",
                                 f"{host} resolves to a private or reserved address ({address}): refused")
        return addresses

    def _get(self, host: str, address: str, deadline: float) -> str:
        """Blocking GET on a socket pinned to `address` (runs in a thread, bounded by `deadline`)."""
        remaining = max(deadline - time.monotonic(), 0.1)
        conn = http.client.HTTPSConnection(host, self.port, timeout=remaining, context=self.context)
        try:
            sock = socket.create_connection((address, self.port), remaining)
            try:
                conn.sock = self.context.wrap_socket(sock, server_hostname=host)
            except BaseException:
                sock.close()
                raise
            conn.request("GET", PATH, headers={"User-Agent": "envoi-mta-sts/1", "Connection": "close"})
            response = conn.getresponse()
            if response.status != 200:  # a redirect too: RFC 8461 3.3 forbids following it
                raise FetchError("sts-policy-fetch-error", f"https://{host}{PATH}: HTTP {response.status}")
            media = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
            if media != "text/plain":
                raise FetchError("sts-policy-fetch-error", f"https://{host}{PATH}: type {media or 'none'!r},"
                                 " not text/plain")
            body = b""
            while len(body) <= MAX_POLICY_BYTES:
                if time.monotonic() > deadline:
                    raise FetchError("sts-policy-fetch-error", f"https://{host}{PATH}: too slow")
                chunk = response.read1(16384)
                if not chunk:
                    break
                body += chunk
            if len(body) > MAX_POLICY_BYTES:
                raise FetchError("sts-policy-fetch-error", f"https://{host}{PATH}: larger than 64 KiB")
            return body.decode("utf-8", "replace")
        except ssl.SSLCertVerificationError as ex:
            raise FetchError("sts-webpki-invalid", f"{host}: certificate not valid ({ex.verify_message})") from ex
        except (OSError, http.client.HTTPException, ssl.SSLError) as ex:
            raise FetchError("sts-policy-fetch-error", f"{host}: {type(ex).__name__}: {ex}") from ex
        finally:
            conn.close()
