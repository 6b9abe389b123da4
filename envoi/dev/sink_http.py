"""The dev sink's HTTP side: its JSON API and its mail-catcher pages (rendered by sink_pages.py).

Routes are listed in sink.py's module docstring. Runs in the sink's own threads (ThreadingHTTPServer).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

from envoi.dev import sink_pages as pages

if TYPE_CHECKING:
    from envoi.dev.sink import Sink

_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*", re.ASCII)


class SinkHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sink: Sink):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.sink = sink
        self.summaries: dict[int, pages.Summary] = {}  # the list's view of each message, by id
        super().__init__(address, _HTTPHandler)


class _HTTPHandler(BaseHTTPRequestHandler):
    server: SinkHTTPServer
    server_version = "EnvoiSink"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests and benchmarks poll a lot; request logs would only be noise

    def _send(self, status: int, body: bytes, content_type: str, csp: str = pages.PAGE_CSP,
              headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        # same-origin, not no-referrer: with no-referrer the pages' own forms would post "Origin: null".
        self.send_header("Referrer-Policy", "same-origin")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _html(self, body: bytes) -> None:
        self._send(200, body, "text/html; charset=utf-8")

    def _download(self, body: bytes, content_type: str, filename: str) -> None:
        # RFC 6266: an ASCII fallback name plus the exact one percent-encoded (RFC 5987).
        fallback = re.sub(r'[^A-Za-z0-9._ -]', "_", filename) or "download"
        if not _MEDIA_TYPE.fullmatch(content_type):  # the mail's own word: keep only a plain type/subtype
            content_type = "application/octet-stream"
        disposition = f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
        self._send(200, body, content_type, pages.DOWNLOAD_CSP, (("Content-Disposition", disposition),))

    def _see_other(self, location: str) -> None:
        self.send_response(303)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _not_found(self) -> None:
        self._json({"error": "not found"}, 404)

    def _route(self) -> tuple[list[str], dict[str, str]]:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        return [p for p in url.path.split("/") if p], query

    def _refused(self) -> bool:
        """Answer 403 to requests a web page elsewhere could make through the user's browser.

        A loopback sink is reachable from any site the developer visits: by DNS rebinding (a foreign
        Host header) it could read the mail, and by a cross-site form it could delete it or set the script.
        """
        host = self.headers.get("Host")
        if host is not None and _is_loopback(self.server.sink.http_host) and not _is_loopback(_hostname(host)):
            self._json({"error": "unexpected Host header"}, 403)
            return True
        origin = self.headers.get("Origin")
        if self.command in ("POST", "DELETE") and origin is not None and \
                origin != f"http://{self.headers.get('Host', '')}":
            self._json({"error": "cross-origin request refused"}, 403)
            return True
        return False

    def do_GET(self) -> None:
        if self._refused():
            return
        sink = self.server.sink
        parts, query = self._route()
        if not parts:
            self._html(pages.list_page(sink.messages(), self.server.summaries, query.get("q", "").strip()))
        elif parts[0] == "view" and len(parts) >= 2 and _is_number(parts[1]):
            self._view(int(parts[1]), parts[2:], query)
        elif parts[0] == "static" and len(parts) == 2 and (found := pages.static_file(parts[1])):
            self._send(200, found[0], found[1], headers=(("Cache-Control", "no-cache"),))
        elif parts == ["messages"]:
            try:
                since_id = int(query["since_id"]) if "since_id" in query else None
            except ValueError:
                return self._json({"error": "since_id must be an integer"}, 400)
            items = sink.messages(to=query.get("to"), since_id=since_id)
            self._json({"items": items, "total": len(items)})
        elif parts[0] == "messages" and len(parts) in (2, 3) and _is_number(parts[1]):
            msg = sink.message(int(parts[1]))
            if msg is None or (len(parts) == 3 and parts[2] != "raw"):
                self._not_found()
            elif len(parts) == 3:
                self._send(200, _raw(msg), "message/rfc822")
            else:
                self._json(msg)
        elif parts == ["stats"]:
            self._json(sink.stats())
        elif parts == ["script"]:
            self._json(sink.script())
        else:
            self._not_found()

    do_HEAD = do_GET

    def _view(self, msg_id: int, rest: list[str], query: dict[str, str]) -> None:
        msg = self.server.sink.message(msg_id)
        if msg is None:
            return self._not_found()
        if rest == ["raw"]:
            return self._download(_raw(msg), "message/rfc822", f"message-{msg_id}.eml")
        mail = pages.Mail.parse(_raw(msg))
        images = query.get("images") == "1"
        if not rest:
            self._html(pages.render_view(msg, mail, images=images))
        elif rest == ["html"] and mail.html is not None:
            csp = pages.MAIL_HTML_IMAGES_CSP if images else pages.MAIL_HTML_CSP
            self._send(200, pages.mail_html(mail), "text/html; charset=utf-8", csp)
        elif len(rest) == 2 and rest[0] == "attachments" and _is_number(rest[1]) \
                and int(rest[1]) < len(mail.attachments):
            attachment = mail.attachments[int(rest[1])]
            self._download(attachment.payload, attachment.content_type, attachment.filename)
        else:
            self._not_found()

    def do_POST(self) -> None:
        if self._refused():
            return
        sink = self.server.sink
        parts = self._route()[0]
        # The pages' forms: act, then back to the list (303, so a reload does not post again).
        if parts == ["delete-all"]:
            sink.clear()
            return self._see_other("/")
        if len(parts) == 3 and parts[0] == "view" and _is_number(parts[1]) and parts[2] == "delete":
            return self._see_other("/") if sink.delete(int(parts[1])) else self._not_found()
        if parts != ["script"]:
            return self._not_found()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            sink.set_script(json.loads(body or b"{}"))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            return self._json({"error": str(exc)}, 400)
        self._json(sink.script())

    def do_DELETE(self) -> None:
        if self._refused():
            return
        parts = self._route()[0]
        if parts == ["messages"]:
            self._json({"deleted": self.server.sink.clear()})
        elif parts == ["script"]:
            self.server.sink.reset_script()
            self._json(self.server.sink.script())
        else:
            self._not_found()


def _hostname(host_header: str) -> str:
    try:
        return urlsplit("//" + host_header).hostname or ""
    except ValueError:  # e.g. an unclosed "[::1"
        return ""


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_number(part: str) -> bool:
    return part.isascii() and part.isdigit()  # "²".isdigit() too, and int() refuses it


def _raw(msg: dict[str, Any]) -> bytes:
    return msg["data"].encode("utf-8", "surrogateescape")
