"""SIGHUP reloads what a long-running process reads from files, without dropping a connection."""

from __future__ import annotations

import signal
import socket
import ssl
import uuid

import pytest
import trustme

from envoi.dev.sink import Sink
from tests.support.delivery import route, send
from tests.support.dns_server import DnsServer
from tests.support.processes import Proc, envoi, free_port, http_ok, process_env
from tests.support.relay import wait_until

pytestmark = pytest.mark.e2e


def write_certificate(ca: trustme.CA, host: str, cert_path, key_path) -> bytes:
    """Issue a certificate for `host`, write it as the server's files, return its DER."""
    issued = ca.issue_cert(host, "127.0.0.1")
    cert_path.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    key_path.write_bytes(issued.private_key_pem.bytes())
    return ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())


def served_certificate(port: int) -> bytes:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ssl._create_unverified_context().wrap_socket(raw) as tls:
        return tls.getpeercert(binary_form=True)


@pytest.mark.parametrize("processes", [1, 2])
def test_smtp_sighup_serves_the_new_certificate_and_keeps_open_sessions(tmp_path, settings, processes):
    ca = trustme.CA()
    cert, key = tmp_path / "smtp.pem", tmp_path / "smtp.key"
    old = write_certificate(ca, "old.smtp.test", cert, key)
    port = free_port()
    proc = Proc("smtp-reload", envoi("smtp", "--bind", "127.0.0.1", "--port", "0", "--smtps-port", str(port),
                                     "--cert", str(cert), "--key", str(key), "--processes", str(processes),
                                     "--var", str(tmp_path)), process_env(settings), tmp_path)
    try:
        proc.wait_ready(lambda: proc.output().count("smtp: region") >= processes, timeout=90)
        open_session = ssl._create_unverified_context().wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=10))
        reader = open_session.makefile("rb")
        assert reader.readline().startswith(b"220")
        assert open_session.getpeercert(binary_form=True) == old
        new = write_certificate(ca, "new.smtp.test", cert, key)
        proc.popen.send_signal(signal.SIGHUP)
        # every server process answers with the new certificate (several connections: SO_REUSEPORT spreads them)
        wait_until(lambda: all(served_certificate(port) == new for _ in range(6)), timeout=15)
        open_session.sendall(b"EHLO client.test\r\n")  # the session opened before the reload goes on
        line = reader.readline()
        while line[3:4] == b"-":
            line = reader.readline()
        assert line.startswith(b"250")
        assert open_session.getpeercert(binary_form=True) == old
        open_session.close()
        assert proc.popen.poll() is None
    finally:
        proc.stop()


SHAPING = """
[default]
max_connections = 2

[[rule]]
name = "test-site"
mx_suffixes = ["{domain}"]
max_connections = 1
messages_per_connection = {per_connection}
"""


def test_relay_sighup_reloads_shaping_rules(tmp_path, settings, services, domain):
    """A rule's messages_per_connection, changed in the shaping file: after SIGHUP the relay's (already
    open) destination follows the new value — one message per session before, one session for many after."""
    rcpt_domain = f"shape-{uuid.uuid4().hex[:8]}.test"
    shaping = tmp_path / "shaping.toml"
    shaping.write_text(SHAPING.format(domain=rcpt_domain, per_connection=1))
    with Sink() as sink, DnsServer() as dns:
        route(dns, rcpt_domain)
        env = process_env(settings, ENVOI_DNS_RESOLVER=f"127.0.0.1:{dns.port}", ENVOI_MX_PORT=sink.smtp_port,
                          ENVOI_RELAY_HOST=f"relay-shape-{uuid.uuid4().hex[:6]}", ENVOI_SHAPING_FILE=shaping)
        metrics = free_port()
        proc = Proc("relay-shape", envoi("relay", "--metrics-port", str(metrics)), env, tmp_path)
        try:
            proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{metrics}/readyz"), timeout=90)

            def sessions_for(n: int, tag: str) -> set[float]:
                addresses = [f"{tag}{i}@{rcpt_domain}" for i in range(n)]
                for address in addresses:  # one after the other: each waits for the one before
                    send(services, domain["account_id"], domain, address)
                    wait_until(lambda a=address: sink.messages(to=a), timeout=30)
                return {sink.messages(to=a)[0]["connected_at"] for a in addresses}

            assert len(sessions_for(3, "before")) == 3  # messages_per_connection = 1
            shaping.write_text(SHAPING.format(domain=rcpt_domain, per_connection=100))
            proc.popen.send_signal(signal.SIGHUP)
            wait_until(lambda: "shaping rules reloaded" in proc.output(), timeout=15)
            assert len(sessions_for(3, "after")) == 1  # one session carries them all now
            assert proc.popen.poll() is None
        finally:
            proc.stop()
