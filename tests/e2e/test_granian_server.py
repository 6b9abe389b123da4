"""ENVOI_API_SERVER: `envoi api` served by granian (the default) or gunicorn gives the same (metrics on the
metrics bind summed over the workers, a chunked body, the client address, SIGHUP replacing the workers,
SIGTERM finishing a request in flight within 2 s, logs as ENVOI_LOG_FORMAT says) and the same answers on
the wire (curl's Expect: 100-continue, 413 before the upload, malformed requests refused, a cut body not
sent); `envoi tracking` with per-host certificates runs under gunicorn (SNI)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
import uuid

import pytest
import trustme

from envoi import granian_server
from tests.support.api import multipart
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


def multipart_form(domain: dict, subject: str) -> tuple[bytes, str]:
    return multipart({"from": f"app@{domain['name']}", "to": "r@inbox.test", "subject": subject,
                      "text": "hello " * 200}.items())


def chunked_post(port: int, path: str, body: bytes, api_key: str, *, pause=None,
                 content_type: str = "application/x-www-form-urlencoded") -> http.client.HTTPConnection:
    """Send the request with Transfer-Encoding: chunked, its body in two chunks; pause() runs between them."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", path)
    for name, value in headers(api_key, **{"Transfer-Encoding": "chunked", "Content-Type": content_type}).items():
        conn.putheader(name, value)
    conn.endheaders()
    half = len(body) // 2
    conn.send(b"%x\r\n%s\r\n" % (half, body[:half]))
    if pause:
        pause()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused on the headers: the answer waits
        conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body) - half, body[half:]))
    return conn


def workers(pid: int) -> set[str]:
    """The master's worker processes (forked: no helper process among its children)."""
    return set(subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split())


@pytest.fixture(params=["granian", "gunicorn"])
def api(request, tmp_path, settings):
    port, metrics = free_port(), free_port()
    proc = Proc("api", envoi("api", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4",
                             "--metrics-port", str(metrics)),
                process_env(settings, ENVOI_API_SERVER=request.param, ENVOI_TRUSTED_PROXIES="127.0.0.1/32"), tmp_path)
    try:
        proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=90)
        proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{metrics}/readyz"), timeout=30)
        yield proc, port, metrics
    finally:
        proc.stop()


def test_serves_sends_chunked_bodies_metrics_and_reloads_on_sighup(api, domain, api_key, db):
    proc, port, metrics = api
    subject = f"granian-{uuid.uuid4().hex[:8]}"
    path = f"/v3/{domain['name']}/messages"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=form(domain, subject), headers=headers(api_key))
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
    assert stored(db, domain) == 1
    body, ctype = multipart_form(domain, subject + "-chunked")
    resp = chunked_post(port, path, body, api_key, content_type=ctype).getresponse()
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


def test_sigterm_finishes_the_request_in_flight_within_2s(api, domain, api_key, db):
    proc, port, _ = api
    subject = f"granian-term-{uuid.uuid4().hex[:8]}"
    stopped = {}

    def terminate() -> None:
        time.sleep(0.3)  # the request is in a worker, its body half read
        stopped["at"] = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        time.sleep(0.2)

    body, ctype = multipart_form(domain, subject)
    resp = chunked_post(port, f"/v3/{domain['name']}/messages", body, api_key, pause=terminate, content_type=ctype)
    resp = resp.getresponse()
    assert resp.status == 200, resp.read()
    proc.popen.wait(10)
    assert time.monotonic() - stopped["at"] <= 2.0, proc.output()
    assert proc.popen.returncode == 0, proc.output()
    assert stored(db, domain) == 1


def https_healthz(port: int, host: str, ca: trustme.CA) -> int:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return int(tls.recv(100).split()[1])


@pytest.mark.parametrize("per_host", [False, True], ids=["one-certificate", "per-host-certificates"])
def test_tracking_over_https_under_granian_or_with_per_host_certificates_gunicorn(tmp_path, settings, per_host):
    """One certificate: granian serves it. Per-host certificates (chosen by SNI, which granian cannot do):
    gunicorn, whatever ENVOI_API_SERVER says."""
    ca = trustme.CA()
    pem = tmp_path / "default.pem"
    ca.issue_cert("track.example.test").private_key_and_cert_chain_pem.write_to_path(str(pem))
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    ca.issue_cert("email.own.example.test").private_key_and_cert_chain_pem.write_to_path(
        str(hosts / "email.own.example.test.pem"))
    port = free_port()
    env = process_env(settings, ENVOI_API_SERVER="granian", ENVOI_TRACKING_TLS_CERT=pem, ENVOI_TRACKING_TLS_KEY=pem,
                      **({"ENVOI_TRACKING_TLS_DIR": hosts} if per_host else {}))
    proc = Proc("tracking", envoi("tracking", "--bind", f"127.0.0.1:{port}", "--workers", "1"), env, tmp_path)
    try:
        proc.wait_ready(lambda: https_healthz(port, "track.example.test", ca) == 200, timeout=90)
        command = open(f"/proc/{proc.popen.pid}/cmdline", "rb").read().split(b"\0")  # noqa: SIM115
        assert (b"gunicorn" in command) == per_host, command
        if per_host:  # its own certificate: verified against the host's name
            assert https_healthz(port, "email.own.example.test", ca) == 200
        else:
            with pytest.raises(ssl.SSLCertVerificationError):
                https_healthz(port, "email.own.example.test", ca)
    finally:
        proc.stop()


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


# -- the same wire behaviour under either server --------------------------------------------------------

@pytest.fixture(scope="module", params=["gunicorn", "granian"])
def api_server(request, tmp_path_factory, settings):
    """`envoi api` under each HTTP server (ENVOI_API_SERVER), one worker. One per server for the module, not
    per test (a start-up takes seconds on a loaded machine, and ~28 tests use it): no test here changes the
    server's state, and each sends as its own domain and counts only its own rows."""
    port = free_port()
    proc = Proc(f"api-{request.param}", envoi("api", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4"),
                process_env(settings, ENVOI_API_SERVER=request.param), tmp_path_factory.mktemp(f"api-{request.param}"))
    try:
        proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=90)
        yield proc, port
    finally:
        proc.stop()


@pytest.fixture
def served(api_server):
    """The shared server's port; checked after the test, so that a request that killed or wedged the server
    fails the test that sent it, not the next one."""
    proc, port = api_server
    yield port
    proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=30)


def raw_exchange(port: int, data: bytes, *, half_close: bool = False) -> bytes:
    """Send `data` as is; the answer until the server closes (half_close: the client stops sending first,
    as one whose upload was cut off, and still reads)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused before it was all sent
            sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


def curl_send(port: int, domain: dict, api_key: str, attachment, subject: str) -> tuple[int, str, dict]:
    """curl -F as a user types it: an attachment over 1 MB makes curl send Expect: 100-continue and wait (up
    to 1 s) for the server's 100 before the body."""
    done = subprocess.run(["curl", "-sS", "-v", "--user", f"api:{api_key}", "-o", "/dev/stderr",
                           "-w", "%{http_code} %{size_upload}\n", f"http://127.0.0.1:{port}/v3/{domain['name']}/messages",
                           "-F", f"from=app@{domain['name']}", "-F", "to=r@inbox.test", "-F", f"subject={subject}",
                           "-F", "text=hi", "-F", f"attachment=@{attachment}"], capture_output=True, text=True, timeout=60)
    code, uploaded = done.stdout.split()
    return int(code), done.stderr, {"uploaded": int(uploaded)}


def test_an_oversized_body_is_refused_before_it_is_read(served, domain, api_key, db):
    port = served
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", f"/v3/{domain['name']}/messages")
    for name, value in headers(api_key, **{"Content-Length": str(60 * 1024 * 1024)}).items():
        conn.putheader(name, value)
    conn.endheaders()
    conn.send(form(domain, "too big")[:100])  # the rest never comes: the answer must not wait for it
    resp = conn.getresponse()
    assert resp.status == 413 and b"52.4MiB" in resp.read()
    conn.close()  # the server is shared with the next tests: nothing of this request left on it
    assert stored(db, domain) == 0


def test_curl_upload_with_expect_100_continue(served, domain, api_key, db, tmp_path):
    attachment = tmp_path / "report.bin"
    attachment.write_bytes(os.urandom(3 * 1024 * 1024))
    code, trace, _ = curl_send(served, domain, api_key, attachment, "expect")
    assert code == 200, trace[-2000:]
    assert "> Expect: 100-continue" in trace and "< HTTP/1.1 100 Continue" in trace
    rows = messages_of(db, domain)
    assert len(rows) == 1 and rows[0]["size"] > 3 * 1024 * 1024, rows


def test_curl_oversized_upload_is_refused_before_it_is_sent(served, domain, api_key, db, tmp_path):
    huge = tmp_path / "huge.bin"
    with huge.open("wb") as out:
        out.truncate(60 * 1024 * 1024)  # sparse
    code, trace, sent = curl_send(served, domain, api_key, huge, "huge")
    assert code == 413 and "52.4MiB" in trace
    # refused on the headers, not after 60 MB (gunicorn sends its 100 Continue at once, so curl has sent a
    # few MB when the 413 comes; granian sends it only when the app reads the body: nothing is sent)
    assert sent["uploaded"] < 10 * 1024 * 1024, sent
    assert stored(db, domain) == 0


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_form_cut_short_is_not_sent(served, framing, domain, api_key, db):
    """The client stops mid-body (its connection cut): what came must not be sent as a shorter message."""
    # (granian ends a cut chunked body as if it were whole: it refuses a chunked urlencoded form, below)
    body = form(domain, "cut")
    head = (f"POST /v3/{domain['name']}/messages HTTP/1.1\r\nHost: x\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers(api_key).items())
            + (f"Content-Length: {len(body)}" if framing == "content-length" else "Transfer-Encoding: chunked")
            + "\r\nConnection: close\r\n\r\n").encode()
    part = body[:-100]
    answer = raw_exchange(served, head + (part if framing == "content-length" else b"%x\r\n%s\r\n" % (len(part), part)),
                          half_close=True)
    assert not answer.startswith(b"HTTP/1.1 200"), answer
    if framing == "content-length":
        assert answer.startswith(b"HTTP/1.1 400") and b"ended before its Content-Length" in answer, answer
    assert stored(db, domain) == 0


def test_a_chunked_urlencoded_form_needs_a_length_under_granian(request, served, domain, api_key, db):
    """granian cannot tell a chunked body cut off from a whole one, and a form has no end marker: 411 (a
    multipart body, whose closing boundary shows a cut, may come chunked: the test above with SIGHUP)."""
    resp = chunked_post(served, f"/v3/{domain['name']}/messages", form(domain, "chunked form"), api_key).getresponse()
    if "granian" in request.node.callspec.id:
        assert resp.status == 411 and b"Content-Length" in resp.read()
        assert stored(db, domain) == 0
    else:
        assert resp.status == 200, resp.read()
        assert stored(db, domain) == 1


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX A: a\r\n\r\n",
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5_000_000 + b"\r\n\r\n",
], ids=["request-line", "nul-in-header", "obs-fold", "space-in-name", "two-lengths", "negative-length",
        "150-headers", "5M-header"])
def test_malformed_requests_are_refused_and_the_connection_closed(served, request_bytes):
    answer = raw_exchange(served, request_bytes)
    status = answer.split(b"\r\n", 1)[0]
    # (a 5 MB header: the answer, or a reset while the rest was still being sent; a header just past
    # granian's ~408 KB buffer can hang until its 30 s header timeout: docs/benchmarks.md, issue 20)
    assert status in (b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 431 Request Header Fields Too Large") \
        or (answer == b"" and len(request_bytes) > 1_000_000), answer[:300]


def test_content_length_with_chunked_cannot_smuggle_a_request(served, domain, api_key, db):
    """Transfer-Encoding and Content-Length together: gunicorn refuses the request, granian reads it as
    chunked (RFC 9112 6.3) and closes the connection; either way the bytes after it are never a request."""
    body = form(domain, "smuggle")
    smuggled = (f"POST /v3/{domain['name']}/messages HTTP/1.1\r\nHost: x\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers(api_key).items())
                + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    head = (f"POST /v3/{domain['name']}/messages HTTP/1.1\r\nHost: x\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers(api_key).items())
            + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    answer = raw_exchange(served, head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) + smuggled)
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert stored(db, domain) <= 1


def test_a_request_environ_holds_none_of_the_process_environment(monkeypatch):
    """granian starts each environ from os.environ: the secret key and the database URL would sit in every
    request (an error report's dump); the app is given only what the request brought."""
    monkeypatch.setenv("ENVOI_SECRET_KEY", "c2VjcmV0")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        return []

    wrapped = granian_server.without_process_environment(app)
    environ = {**os.environ, "REQUEST_METHOD": "GET", "PATH_INFO": "/healthz", "HTTP_HOST": "x",
               "REMOTE_ADDR": "127.0.0.1", "wsgi.input": None}
    wrapped(environ, lambda *a: None)
    assert "ENVOI_SECRET_KEY" not in seen and "PATH" not in seen
    assert seen["PATH_INFO"] == "/healthz" and seen["HTTP_HOST"] == "x" and seen["REMOTE_ADDR"] == "127.0.0.1"
    assert seen["HTTP_PROXY"] == "http://proxy.internal:3128"  # could be a header the client sent: kept
