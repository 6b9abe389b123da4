"""SIGHUP reloads what a long-running process reads from files, without dropping a connection."""

from __future__ import annotations

import signal
import socket
import ssl

import pytest
import trustme

from tests.support.processes import Proc, envoi, free_port, process_env
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
