"""A local HTTPS host serving MTA-STS policies (RFC 8461 3.3) for tests, with a trustme certificate.

    with PolicyServer(ca, ["mta-sts.a.test"]) as web:
        web.policies["mta-sts.a.test"] = "version: STSv1\\nmode: enforce\\nmx: mx.a.test\\nmax_age: 86400\\n"
        ... settings.replace(mta_sts_port=web.port, mta_sts_allow=("127.0.0.0/8",), tls_ca_file=ca_file)

It answers by the Host header; `requests` lists the hosts asked, `status` / `headers` override the reply
for a host (a redirect, another media type).
"""

from __future__ import annotations

import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.servers import serve_in_background, shutdown


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        server: PolicyServer = self.server.owner  # type: ignore[attr-defined]
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        server.requests.append((host, self.path))
        text = server.policies.get(host)
        status = server.status.get(host, 200 if text is not None and self.path == "/.well-known/mta-sts.txt"
                                   else 404)
        body = (text or "").encode()
        self.send_response(status)
        headers = {"Content-Type": "text/plain", **server.headers.get(host, {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class PolicyServer:
    def __init__(self, ca, hosts: list[str]):
        self.policies: dict[str, str] = {}
        self.status: dict[str, int] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.requests: list[tuple[str, str]] = []
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*hosts).configure_cert(self._context)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.owner = self  # type: ignore[attr-defined]
        self._server.socket = self._context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]

    def fetches(self, host: str) -> int:
        return sum(1 for h, _ in self.requests if h == host)

    def __enter__(self) -> PolicyServer:
        self._thread = serve_in_background(self._server)
        return self

    def __exit__(self, *exc) -> None:
        shutdown(self._server)
        self._server.server_close()
        self._thread.join()
