"""A real HTTP server on 127.0.0.1 that records form POSTs (urlencoded or multipart), as route
forward(url) and store(notify=) targets; `script` scripts replies per path (last status repeats)."""

from __future__ import annotations

import email
import email.policy
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from tests.support.servers import serve_in_background, shutdown


def parse_form(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, tuple[str, str, bytes]]]:
    """(fields, files {name: (filename, content type, bytes)}) of a form body."""
    if content_type.startswith("application/x-www-form-urlencoded"):
        return {k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}, {}
    msg = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body,
                                   policy=email.policy.HTTP)
    fields, files = {}, {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_param("filename", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        if filename is not None:
            files[name] = (filename, part.get_content_type(), data)
        else:
            fields[name] = data.decode("utf-8")
    return fields, files


class FormReceiver:
    def __init__(self):
        self.script: dict[str, list[int]] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    replies = receiver.script.get(self.path, [200])
                    status = replies.pop(0) if len(replies) > 1 else replies[0]
                content_type = self.headers.get("Content-Type", "")
                fields, files = parse_form(content_type, body)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                with receiver.arrived:
                    receiver.requests.append({"path": self.path, "status": status, "content_type": content_type,
                                              "fields": fields, "files": files})
                    receiver.arrived.notify_all()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def got(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def wait(self, path: str, count: int = 1, timeout: float = 15.0) -> list[dict]:
        with self.arrived:
            self.arrived.wait_for(lambda: len([r for r in self.requests if r["path"] == path]) >= count, timeout)
            found = [r for r in self.requests if r["path"] == path]
        assert len(found) >= count, f"{len(found)} POSTs to {path} within {timeout}s, wanted {count}"
        return found

    def __enter__(self) -> FormReceiver:
        serve_in_background(self.server)
        return self

    def __exit__(self, *exc) -> None:
        shutdown(self.server)
        self.server.server_close()
