"""TLS contexts from a throwaway CA (trustme) for SMTP servers on loopback in tests."""

from __future__ import annotations

import ssl

import trustme


def loopback_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for localhost and 127.0.0.1, client context trusting it)."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client
