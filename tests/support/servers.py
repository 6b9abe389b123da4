"""Loopback test servers (socketserver's, http.server's, wsgiref's) served from a daemon thread."""

from __future__ import annotations

import socketserver
import threading

# shutdown() returns once serve_forever() next polls its stop flag: socketserver's default 0.5 s was paid at
# every teardown of every test server.
POLL_INTERVAL = 0.05


def serve_in_background(server: socketserver.BaseServer, name: str | None = None) -> threading.Thread:
    """Start `server.serve_forever()` in a daemon thread (polling every POLL_INTERVAL); the started thread.
    Stop it with `server.shutdown()` then `server.server_close()`."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}, name=name,
                              daemon=True)
    thread.start()
    return thread
