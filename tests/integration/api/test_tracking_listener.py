"""`envoi tracking`: the tracking links served over HTTPS on the domains' tracking hosts, each host with
its own certificate (chosen by SNI), the token — never the Host — deciding whose hit it is."""

from __future__ import annotations

import re
import socket
import ssl

import pytest
import trustme

from tests.support.delivery import events_of, send
from tests.support.processes import Proc, envoi, free_port, process_env


def https_get(port: int, host: str, path: str, ca: trustme.CA) -> tuple[int, dict, bytes]:
    """A GET to 127.0.0.1:port as a browser sends it to `host` (SNI and Host), checking its certificate."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.fixture
def listener(settings, tmp_path):
    ca = trustme.CA()
    default = ca.issue_cert("tracking.envoi.test")
    default.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "default.pem"))
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    port = free_port()
    env = process_env(settings, ENVOI_TRACKING_TLS_CERT=tmp_path / "default.pem",
                      ENVOI_TRACKING_TLS_KEY=tmp_path / "default.pem", ENVOI_TRACKING_TLS_DIR=hosts)
    proc = Proc("tracking", envoi("tracking", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4"),
                env, tmp_path)

    def ready() -> bool:
        return https_get(port, "tracking.envoi.test", "/healthz", ca)[0] == 200

    try:
        proc.wait_ready(ready, timeout=60)
        yield ca, hosts, port
    finally:
        proc.stop()


def test_a_click_over_https_on_the_tracking_host(services, account, domain, db, listener):
    ca, hosts, port = listener
    host = f"email.{domain['name']}"
    ca.issue_cert(host).private_key_and_cert_chain_pem.write_to_path(str(hosts / f"{host}.pem"))
    services.tracking.update_settings(domain, "click", {"active": "yes"})
    message_id = send(services, account["id"], domain, "ivy@dest.test", o_testmode="yes",
                      html='<p><a href="https://shop.example/item?id=9">buy</a></p>')
    row = db.execute("SELECT body, storage_key FROM messages WHERE message_id = %s", (message_id,)).fetchone()
    mime = services.sealer.open(row["body"], row["storage_key"].encode()).decode()
    [path] = re.findall(rf"http://{re.escape(host)}(/c/[A-Za-z0-9_-]+)", mime.replace("=\r\n", ""))

    # SNI email.<domain>: that host's own certificate (the default one names another host and would fail).
    status, headers, _ = https_get(port, host, path, ca)
    assert status == 302 and headers["location"] == "https://shop.example/item?id=9"
    clicked = [e["data"] for e in events_of(db, message_id) if e["event"] == "clicked"]
    assert [(c["recipient"], c["url"]) for c in clicked] == [("ivy@dest.test", "https://shop.example/item?id=9")]

    # A host without a file of its own gets the default certificate, which does not name it.
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(port, f"email.other-{domain['name']}", path, ca)
    # The Host never decides the account: the same token through the default host records the same hit.
    assert https_get(port, "tracking.envoi.test", path, ca)[0] == 302
    assert len([e for e in events_of(db, message_id) if e["event"] == "clicked"]) == 2
    # Only the tracking links are served on the tracking hosts, not the API.
    assert https_get(port, host, f"/v3/domains/{domain['name']}/tracking", ca)[0] == 404
    # A forged token is a 404 (the guard's per-client count of bad tokens, shared with the rest of the
    # suite's loopback requests in this Redis, is cleared first so it cannot answer 429 instead).
    for key in services.redis.scan_iter(match=f"envoi:{services.settings.region}:tracking:bad:*"):
        services.redis.delete(key)
    assert https_get(port, host, "/c/forged-token", ca)[0] == 404
