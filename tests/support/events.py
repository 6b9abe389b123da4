"""Helpers for the delivery-logs tests: record events directly, serve the app on a real port."""

from __future__ import annotations

import socketserver
import threading
import time
import uuid
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from envoi.events.service import NewEvent, item
from tests.support.servers import serve_in_background, shutdown


def record(services, domain, event="accepted", *, recipient=None, subject="Hello", sender=None, tags=(),
           ts=None, message_id=None, **fields) -> dict:
    """Record one event for `domain` as intake or the relay would, and run the after-commit listeners."""
    recipient = recipient or f"r-{uuid.uuid4().hex[:6]}@dest.test"
    message = {"headers": {"to": recipient, "message-id": message_id or f"{uuid.uuid4().hex}@{domain['name']}",
                           "from": sender or f"Sender <s@{domain['name']}>", "subject": subject},
               "tags": list(tags), "size": 1234}
    data = item(event, message=message, recipient=recipient, ts=ts, **fields)
    events = [NewEvent(domain["account_id"], domain["id"], None, data)]
    with services.db.transaction() as conn:
        services.events.record(conn, events)
    services.events.committed(events)
    return data


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


class AppServer:
    """The falcon app behind a real (threaded wsgiref) HTTP server on a free loopback port."""

    def __init__(self, app):
        self.server = make_server("127.0.0.1", 0, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> AppServer:
        serve_in_background(self.server)
        return self

    def __exit__(self, *exc) -> None:
        shutdown(self.server)
        self.server.server_close()


def collect(iterator, results: list, ready: threading.Event | None = None):
    """Drain an SSE iterator into `results` in a thread; returns the thread."""
    def run():
        try:
            for entry in iterator:
                results.append(entry)
        except Exception as ex:  # surfaced by the test's assertions
            results.append(("error", ex))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.05)
    return thread
