"""ENVOI_API_SERVER=granian: `envoi api` served by granian keeps what gunicorn gives (metrics on the
metrics bind summed over the workers, a chunked body, the client address, SIGHUP replacing the workers,
SIGTERM finishing a request in flight within 2 s, logs as ENVOI_LOG_FORMAT says), and `envoi tracking`
refuses SNI certificates."""

from __future__ import annotations

import base64
import http.client
import json
import signal
import subprocess
import time
import urllib.parse
import urllib.request
import uuid

import pytest
import trustme

from envoi import granian_server
from tests.support.processes import Proc, envoi, free_port, http_ok, process_env
from tests.support.submission import messages_of

pytestmark = pytest.mark.e2e


def stored(db, domain: dict) -> int:
    return len(messages_of(db, domain))


def form(domain: dict, subject: str) -> bytes:
    return urllib.parse.urlencode({"from": f"app@{domain['name']}", "to": "r@inbox.test", "subject": subject,
                                   "text": "hello " * 200}).encode()


def headers(api_key: str, **extra) -> dict:
    auth = base64.b64encode(f"api:{api_key}".encode()).decode()
    return {"Authorization": f"Basic {auth}", "Content-Type": "application/x-www-form-urlencoded", **extra}


def chunked_post(port: int, path: str, body: bytes, api_key: str, *, pause=None) -> http.client.HTTPConnection:
    """Send the request with Transfer-Encoding: chunked, its body in two chunks; pause() runs between them."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", path)
    for name, value in headers(api_key, **{"Transfer-Encoding": "chunked"}).items():
        conn.putheader(name, value)
    conn.endheaders()
    half = len(body) // 2
    conn.send(b"%x\r\n%s\r\n" % (half, body[:half]))
    if pause:
        pause()
    conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body) - half, body[half:]))
    return conn


def workers(pid: int) -> set[str]:
    """The master's worker processes (forked: no helper process among its children)."""
    return set(subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split())


@pytest.fixture
def api(tmp_path, settings):
    port, metrics = free_port(), free_port()
    proc = Proc("api", envoi("api", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4",
                             "--metrics-port", str(metrics)),
                process_env(settings, ENVOI_API_SERVER="granian", ENVOI_TRUSTED_PROXIES="127.0.0.1/32"), tmp_path)
    try:
        proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=90)
        proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{metrics}/readyz"), timeout=30)
        yield proc, port, metrics
    finally:
        proc.stop()


def test_granian_serves_sends_chunked_bodies_metrics_and_reloads_on_sighup(api, domain, api_key, db):
    proc, port, metrics = api
    subject = f"granian-{uuid.uuid4().hex[:8]}"
    path = f"/v3/{domain['name']}/messages"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=form(domain, subject), headers=headers(api_key))
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
    assert stored(db, domain) == 1
    resp = chunked_post(port, path, form(domain, subject + "-chunked"), api_key).getresponse()
    assert resp.status == 200, resp.read()
    assert stored(db, domain) == 2
    # the client address through a trusted proxy (envoi.api.client_address): granian's REMOTE_ADDR
    key = urllib.request.Request(f"http://127.0.0.1:{port}/v1/keys", data=b"role=basic",
                                 headers=headers(api_key, **{"X-Forwarded-For": "203.0.113.7"}))
    with urllib.request.urlopen(key, timeout=30) as resp:
        key_id = json.loads(resp.read())["key"]["id"]
    row = db.execute("SELECT ip FROM audit_log WHERE action = 'key.create' AND target = %s", (key_id,)).fetchone()
    assert str(row["ip"]) == "203.0.113.7"
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=30).read().decode()
    assert 'envoi_messages_accepted_total{method="http"}' in text
    with pytest.raises(urllib.error.HTTPError) as refused:  # never on the public listener
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert refused.value.code == 404

    before = workers(proc.popen.pid)
    proc.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (workers(proc.popen.pid) & before or len(workers(proc.popen.pid)) < 2):
        time.sleep(0.2)
    assert not workers(proc.popen.pid) & before and len(workers(proc.popen.pid)) == 2, proc.output()
    proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=30)
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                data=form(domain, subject + "-after"), headers=headers(api_key)), timeout=30) as resp:
        assert resp.status == 200
    assert stored(db, domain) == 3


def test_granian_sigterm_finishes_the_request_in_flight_within_2s(api, domain, api_key, db):
    proc, port, _ = api
    subject = f"granian-term-{uuid.uuid4().hex[:8]}"
    stopped = {}

    def terminate() -> None:
        time.sleep(0.3)  # the request is in a worker, its body half read
        stopped["at"] = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        time.sleep(0.2)

    resp = chunked_post(port, f"/v3/{domain['name']}/messages", form(domain, subject), api_key, pause=terminate)
    resp = resp.getresponse()
    assert resp.status == 200, resp.read()
    proc.popen.wait(10)
    assert time.monotonic() - stopped["at"] <= 2.0, proc.output()
    assert proc.popen.returncode == 0, proc.output()
    assert stored(db, domain) == 1


def test_tracking_refuses_granian_with_per_host_certificates(tmp_path, settings):
    pem = tmp_path / "default.pem"
    trustme.CA().issue_cert("track.example.test").private_key_and_cert_chain_pem.write_to_path(str(pem))
    env = process_env(settings, ENVOI_API_SERVER="granian", ENVOI_TRACKING_TLS_CERT=pem, ENVOI_TRACKING_TLS_KEY=pem,
                      ENVOI_TRACKING_TLS_DIR=tmp_path)
    done = subprocess.run(envoi("tracking", "--bind", f"127.0.0.1:{free_port()}"), env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot choose a certificate by SNI" in done.stderr


def test_dead_workers_live_gauges_are_dropped(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "30"])
    try:
        for pid in (dead.pid, alive.pid):
            (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"x")
        granian_server.forget_dead_workers(str(tmp_path))
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"gauge_livesum_{alive.pid}.db"]
    finally:
        alive.kill()
        alive.wait()


def test_granian_logs_follow_envoi_log_format(tmp_path, settings):
    """granian's own records (here its access log) come out as Envoi's JSON lines, like the app's."""
    port = free_port()
    proc = Proc("api-json", envoi("api", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--access-log"),
                process_env(settings, ENVOI_API_SERVER="granian", ENVOI_LOG_FORMAT="json"), tmp_path)
    try:
        proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=90)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "/healthz" not in proc.log.read_text():
            time.sleep(0.1)
    finally:
        proc.stop()
    lines = [json.loads(line) for line in proc.log.read_text().splitlines() if line.startswith("{")]
    access = [entry for entry in lines if entry["logger"] == "granian.access" and "/healthz" in entry["message"]]
    assert access and access[0]["process"] == "api" and access[0]["level"] == "info", proc.output()
    assert all(line.startswith("{") for line in proc.log.read_text().splitlines() if line.strip()), proc.output()


def test_granian_refuses_an_oversized_body_before_reading_it(api, domain, api_key, db):
    _, port, _ = api
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", f"/v3/{domain['name']}/messages")
    for name, value in headers(api_key, **{"Content-Length": str(60 * 1024 * 1024)}).items():
        conn.putheader(name, value)
    conn.endheaders()
    conn.send(form(domain, "too big")[:100])  # the rest never comes: the answer must not wait for it
    resp = conn.getresponse()
    assert resp.status == 413 and b"52.4MiB" in resp.read()
    assert stored(db, domain) == 0
