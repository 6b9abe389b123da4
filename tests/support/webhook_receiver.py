"""A real HTTP webhook receiver on 127.0.0.1 that verifies Mailgun signatures and scripts replies."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.servers import serve_in_background, shutdown


def mailgun_verify(signing_key: str, timestamp: str, token: str, signature: str) -> bool:
    """Mailgun's documented check (user manual, "Securing Webhooks")."""
    digest = hmac.new(key=signing_key.encode(), msg=f"{timestamp}{token}".encode(), digestmod=hashlib.sha256)
    return hmac.compare_digest(digest.hexdigest(), signature)


class Receiver:
    """script: {path: [status, status, ...]} consumed in order; the last status repeats (default 200)."""

    def __init__(self, signing_key: str | None = None, backlog: int = 5):
        self.signing_key = signing_key
        self.script: dict[str, list[int]] = {}
        self.delay: dict[str, float] = {}
        self.requests: list[dict] = []
        self.active: dict[str, int] = {}  # path -> requests being answered now
        self.most: dict[str, int] = {}  # path -> the most answered at once
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.active[self.path] = now = receiver.active.get(self.path, 0) + 1
                    receiver.most[self.path] = max(now, receiver.most.get(self.path, 0))
                    replies = receiver.script.get(self.path, [200])
                    status = replies.pop(0) if len(replies) > 1 else replies[0]
                    delay = receiver.delay.get(self.path, 0)
                if delay:
                    time.sleep(delay)
                try:
                    payload = json.loads(body)
                    sig = payload["signature"]
                    valid = receiver.signing_key is not None and mailgun_verify(
                        receiver.signing_key, sig["timestamp"], sig["token"], sig["signature"])
                except (ValueError, KeyError, TypeError):
                    payload, valid = None, False
                with receiver.lock:
                    receiver.requests.append({"path": self.path, "at": time.monotonic(), "payload": payload, "valid": valid,
                                              "status": status, "content_type": self.headers.get("Content-Type"),
                                              "authorization": self.headers.get("Authorization")})
                    receiver.active[self.path] -= 1
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(f"reply {status} ".encode() * 200)  # > 1 KB: the stored excerpt is capped

        server_class = type("Server", (ThreadingHTTPServer,), {"request_queue_size": backlog})  # listen backlog
        self.server = server_class(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def got(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def __enter__(self) -> Receiver:
        serve_in_background(self.server)
        return self

    def __exit__(self, *exc) -> None:
        shutdown(self.server)
        self.server.server_close()
