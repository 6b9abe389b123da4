"""Loopback test servers (socketserver's, http.server's, wsgiref's) served from a daemon thread."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading

# shutdown() returns once serve_forever() next polls its stop flag: socketserver's default 0.5 s was paid at
# every teardown of every test server.
POLL_INTERVAL = 0.05


def serve_in_background(server: socketserver.BaseServer, name: str | None = None) -> threading.Thread:
    """Start `server.serve_forever()` in a daemon thread (polling every POLL_INTERVAL); the started thread.
    Stop it with `shutdown(server)` then `server.server_close()`."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}, name=name,
                              daemon=True)
    thread.start()
    return thread


def shutdown(*servers: socketserver.BaseServer) -> None:
    """server.shutdown() for each server started by serve_in_background, without waiting out its poll: each
    is told to stop, then woken by a connection (a datagram, for UDP) to its own socket, which
    serve_forever() leaves unhandled once told to stop. Up to POLL_INTERVAL a server before, at every
    teardown of every test server (the DNS test server has two), a few hundred times in the suite."""
    for server in servers:
        # What shutdown() sets before it waits; set here first so that the wake-up below finds it set.
        server._BaseServer__shutdown_request = True  # type: ignore[attr-defined]
        _wake(server)
    for server in servers:
        server.shutdown()  # returns once serve_forever() has left its loop


def _wake(server: socketserver.BaseServer) -> None:
    address = server.server_address
    with contextlib.suppress(OSError), socket.socket(server.address_family, server.socket_type) as sock:
        if server.socket_type == socket.SOCK_DGRAM:
            sock.sendto(b"", address)
        else:
            sock.settimeout(1)
            sock.connect(address)
