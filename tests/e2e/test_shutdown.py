"""SIGTERM stops every long-running process within 2 s; /healthz and /readyz on each one's metrics bind."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from envoi.dev.sink import Sink
from tests.support.delivery import route, send
from tests.support.dns_server import DnsServer
from tests.support.processes import Proc, envoi, free_port, http_ok, process_env
from tests.support.relay import wait_until

pytestmark = pytest.mark.e2e
STOP_WITHIN = 2.0


def stop_seconds(proc: Proc) -> float:
    """Seconds from SIGTERM to the process's exit (the test fails if it is still running after 10 s)."""
    started = time.monotonic()
    proc.popen.send_signal(signal.SIGTERM)
    proc.popen.wait(10)
    return time.monotonic() - started


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as ex:
        return ex.code, json.loads(ex.read())


def commands(tmp_path, port: int, metrics: int) -> dict[str, list[str]]:
    m = ["--metrics-port", str(metrics)]
    return {
        "api": envoi("api", "--bind", f"127.0.0.1:{port}", "--workers", "2", *m),
        "tracking": envoi("tracking", "--bind", f"127.0.0.1:{port}", "--workers", "2", *m),
        "relay": envoi("relay", *m),
        "smtp": envoi("smtp", "--bind", "127.0.0.1", "--port", str(port), "--smtps-port", "0",
                      "--var", str(tmp_path), *m),
        "smtp-processes": envoi("smtp", "--bind", "127.0.0.1", "--port", str(port), "--smtps-port", "0",
                                "--processes", "2", "--var", str(tmp_path), *m),
        "inbound": envoi("inbound", "--bind", "127.0.0.1", "--port", str(port), *m),
        "worker": envoi("worker", "--processes", "2", *m),
        "dispatch": envoi("webhooks", "dispatch", "--processes", "2", *m),
        "scheduler": envoi("scheduler", *m),
    }


@pytest.mark.parametrize("name", ["api", "tracking", "relay", "smtp", "smtp-processes", "inbound", "worker",
                                  "dispatch", "scheduler"])
def test_sigterm_stops_the_idle_process_within_2s_and_it_answers_health_and_readiness(tmp_path, settings, name):
    port, metrics = free_port(), free_port()
    proc = Proc(name, commands(tmp_path, port, metrics)[name], process_env(settings), tmp_path)
    try:
        proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{metrics}/readyz"), timeout=90)
        status, body = get(f"http://127.0.0.1:{metrics}/healthz")
        assert status == 200 and body["status"] == "ok"
        status, body = get(f"http://127.0.0.1:{metrics}/readyz")
        assert status == 200 and body["checks"]["postgres"] == "ok" and body["checks"]["redis"] == "ok"
        if name in ("api", "tracking"):  # and on the public listener, for a load balancer
            proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=90)  # workers loaded
            status, body = get(f"http://127.0.0.1:{port}/readyz")
            assert status == 200 and body["checks"]["postgres"] == "ok"
        time.sleep(1)  # past start-up: the loops are running
        took = stop_seconds(proc)
        print(f"{name} stopped in {took:.2f}s")
        assert took <= STOP_WITHIN, proc.output()
        assert proc.popen.returncode == 0, proc.output()  # a clean stop, not a crash on the way out
    finally:
        proc.stop()


# -- in-flight work ---------------------------------------------------------------------------------

def recipient(db, message_id: str) -> dict:
    return db.execute("SELECT r.status, r.lease_owner, r.leased_until FROM recipients r JOIN messages m"
                      " ON m.id = r.message_pk WHERE m.message_id = %s", (message_id,)).fetchone()


def delivered_events(db, message_id: str) -> int:
    return db.execute("SELECT count(*) AS n FROM events WHERE message_id = %s AND event = 'delivered'",
                      (message_id,)).fetchone()["n"]


def relay_proc(tmp_path, settings, name: str, sink, dns) -> Proc:
    env = process_env(settings, ENVOI_DNS_RESOLVER=f"127.0.0.1:{dns.port}", ENVOI_MX_PORT=sink.smtp_port,
                      ENVOI_RELAY_HOST=name, ENVOI_SMTP_TIMEOUT=30)
    metrics = free_port()
    proc = Proc(name, envoi("relay", "--metrics-port", str(metrics)), env, tmp_path)
    proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{metrics}/readyz"), timeout=90)
    return proc


@pytest.mark.parametrize("data_delay", [0.6, 8.0])
def test_relay_sigterm_finishes_a_delivery_in_flight_or_hands_its_lease_back(tmp_path, settings, services, db,
                                                                             domain, data_delay):
    """A slow MX: a delivery that can finish within the drain is delivered; one that cannot is handed back
    at once (no lease left to run out), and another relay delivers it right away. Either way it is
    delivered once, and the relay is gone within 2 s."""
    rcpt_domain = f"slow-{uuid.uuid4().hex[:8]}.test"
    with Sink() as sink, DnsServer() as dns:
        route(dns, rcpt_domain)
        sink.set_script({"data_delay": data_delay})
        first = relay_proc(tmp_path, settings, f"relay-a-{uuid.uuid4().hex[:6]}", sink, dns)
        try:
            message_id = send(services, domain["account_id"], domain, f"x@{rcpt_domain}")
            wait_until(lambda: (recipient(db, message_id) or {}).get("lease_owner"), timeout=30)
            time.sleep(0.3)  # the session is open and waiting on the sink's DATA reply
            assert stop_seconds(first) <= STOP_WITHIN, first.output()
        finally:
            first.stop()
        row = recipient(db, message_id)
        if data_delay < 1:  # finished within the drain
            assert row["status"] == "delivered"
            assert delivered_events(db, message_id) == 1
            return
        assert row["status"] == "queued" and row["lease_owner"] is None, row  # handed back, not left leased
        assert "handed back to the queue" in first.output()
        sink.set_script({"data_delay": 0})
        second = relay_proc(tmp_path, settings, f"relay-b-{uuid.uuid4().hex[:6]}", sink, dns)
        try:
            wait_until(lambda: recipient(db, message_id)["status"] == "delivered", timeout=15)
        finally:
            second.stop()
        assert delivered_events(db, message_id) == 1


def smtp_command(sock_file, sock, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    return reply(sock_file)


def reply(sock_file) -> bytes:
    lines = []
    while True:
        line = sock_file.readline()
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return b"".join(lines)


def test_smtp_sigterm_lets_a_session_in_data_finish_and_tells_idle_ones_421(tmp_path, settings, services, domain,
                                                                            account, db):
    """SIGTERM with two sessions open: the one sending DATA finishes its message (250, stored); the idle
    one is told 421 4.3.2; the server is gone within 2 s."""
    login = f"stop-{uuid.uuid4().hex[:6]}@{domain['name']}"
    services.accounts.create_credential(account["id"], domain["name"], login.split("@")[0], "stop-pass-1")
    port = free_port()
    proc = Proc("smtp-stop", envoi("smtp", "--bind", "127.0.0.1", "--port", "0", "--smtps-port", str(port),
                                   "--var", str(tmp_path)), process_env(settings), tmp_path)
    proc.wait_ready(lambda: "smtp: region" in proc.output(), timeout=90)
    ctx = ssl._create_unverified_context()
    try:
        busy = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
        idle = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
        busy_file, idle_file = busy.makefile("rb"), idle.makefile("rb")
        for sock, f in ((busy, busy_file), (idle, idle_file)):
            assert reply(f).startswith(b"220")
            assert smtp_command(f, sock, b"EHLO client.test").startswith(b"250")
            auth = base64.b64encode(f"\0{login}\0stop-pass-1".encode())
            assert smtp_command(f, sock, b"AUTH PLAIN " + auth).startswith(b"235")
        assert smtp_command(busy_file, busy, f"MAIL FROM:<{login}>".encode()).startswith(b"250")
        rcpt = f"finish-{uuid.uuid4().hex[:8]}@inbox.test"
        assert smtp_command(busy_file, busy, f"RCPT TO:<{rcpt}>".encode()).startswith(b"250")
        assert smtp_command(busy_file, busy, b"DATA").startswith(b"354")
        busy.sendall(f"From: {login}\r\nTo: {rcpt}\r\nSubject: in flight\r\n\r\n".encode())
        started = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        time.sleep(0.4)  # the server is stopping while this message is still being sent
        assert idle_file.readline().startswith(b"421 4.3.2")
        busy.sendall(b"the rest of the body\r\n.\r\n")
        assert reply(busy_file).startswith(b"250"), "the message in DATA was not finished"
        proc.popen.wait(10)
        assert time.monotonic() - started <= STOP_WITHIN, proc.output()
        stored = db.execute("SELECT count(*) AS n FROM recipients WHERE address = %s", (rcpt,)).fetchone()
        assert stored["n"] == 1
    finally:
        proc.stop()


@pytest.mark.parametrize("processes", [1, 2])
def test_worker_sigterm_hands_a_running_bulk_validation_batch_back_and_the_next_worker_finishes_it(
        tmp_path, settings, services, account, db, processes):
    """A batch waiting on a DNS server that never answers (8 s deadline) is interrupted ~1 s after SIGTERM
    and put back on its queue; the group (parent forwarding SIGTERM to its child) is gone within 2 s, and
    a second worker validates the whole list once."""
    import redis
    from rq import Queue

    from envoi.validation import jobs as validation_jobs

    addresses = [f"user{i}@good.test" for i in range(5)] + ["who@slow.test", "bad address"]
    list_id = f"shutdown-{uuid.uuid4().hex[:8]}"
    with DnsServer() as dns:
        dns.add("good.test", "MX", "10 mx.good.test.")
        dns.add("mx.good.test", "A", "127.0.0.1")
        dns.drop("slow.test")  # never answers
        env = process_env(settings, ENVOI_DNS_RESOLVER=f"127.0.0.1:{dns.port}", ENVOI_VALIDATION_BATCH=50,
                          ENVOI_VALIDATION_DNS_TIMEOUT=8)
        metrics = free_port()
        proc = Proc("worker", envoi("worker", "--processes", str(processes), "--metrics-port", str(metrics)),
                    env, tmp_path)
        try:
            proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{metrics}/readyz"), timeout=90)
            data = ("email\n" + "\n".join(addresses) + "\n").encode()
            services.validation.create_job(account["id"], list_id, data)
            job_id = db.execute("SELECT id FROM validation_jobs WHERE list_id = %s AND account_id = %s",
                                (list_id, account["id"])).fetchone()["id"]
            wait_until(lambda: dns.count("slow.test") > 0, timeout=30)  # the batch is waiting on DNS
            time.sleep(0.3)
            took = stop_seconds(proc)
            print(f"worker --processes {processes} with a job running stopped in {took:.2f}s")
            assert took <= STOP_WITHIN, proc.output()
        finally:
            proc.stop()
        assert "handed back" in proc.output()
        queued = Queue(validation_jobs.QUEUE, connection=redis.Redis.from_url(settings.redis_url)).get_jobs()
        assert [j.args for j in queued if j.args == (job_id,)] == [(job_id,)]  # back on the queue, once
        row = db.execute("SELECT status, records_processed FROM validation_jobs WHERE id = %s", (job_id,)).fetchone()
        assert row["records_processed"] == 0 and row["status"] != "uploaded"

        second = Proc("worker2", envoi("worker", "--processes", "1", "--burst"),
                      {**env, "ENVOI_VALIDATION_DNS_TIMEOUT": "0.5"}, tmp_path)
        try:
            assert second.popen.wait(120) == 0, second.output()
        finally:
            second.stop()
    row = db.execute("SELECT status, records_processed FROM validation_jobs WHERE id = %s", (job_id,)).fetchone()
    assert (row["status"], row["records_processed"]) == ("uploaded", len(addresses))
    items = db.execute("SELECT position, result FROM validation_items WHERE job_id = %s ORDER BY position",
                       (job_id,)).fetchall()
    assert len(items) == len(addresses) and all(item["result"] is not None for item in items)
    assert [item["result"]["address"] for item in items] == addresses


# -- a process group's readiness ----------------------------------------------------------------------

def children_of(pid: int) -> list[int]:
    """The live children of a process (from /proc: each one's parent pid)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()  # noqa: SIM115
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return sorted(found)


def metric(url: str, name: str, **labels) -> float | None:
    """One sample's value on a /metrics page (None: not there)."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return None


@pytest.mark.parametrize("name", ["smtp-processes", "worker", "dispatch", "api"])
def test_a_groups_dead_child_makes_it_unready_until_its_replacement_is_ready(tmp_path, settings, services, domain,
                                                                             account, db, name):
    """`--processes 2` (and gunicorn's 2 workers): /readyz on the group's metrics bind counts the children.
    One SIGKILLed: 503 naming the children. The parent replaces it (gunicorn's master its worker): ready
    again once the new one has started, the replacement logged and counted on /metrics; smtp's new child
    binds the shared port (SO_REUSEPORT) and a message sent over SMTP after that is accepted and stored."""
    import smtplib

    port, metrics = free_port(), free_port()
    proc = Proc(name, commands(tmp_path, port, metrics)[name], process_env(settings), tmp_path)
    readyz, metrics_url = f"http://127.0.0.1:{metrics}/readyz", f"http://127.0.0.1:{metrics}/metrics"
    group = {"smtp-processes": "smtp", "worker": "worker", "dispatch": "webhooks-dispatch", "api": "api"}[name]
    try:
        proc.wait_ready(lambda: http_ok(readyz), timeout=90)
        status, body = get(readyz)
        assert status == 200 and body["checks"]["children"] == "ok", body
        children = [pid for pid in children_of(proc.popen.pid) if pid != proc.popen.pid]
        expected = 1 if name in ("worker", "dispatch") else 2  # those parents are themselves one of the group
        assert len(children) == expected, children
        assert metric(metrics_url, "envoi_process_group_children", group=group, state="expected") == expected
        os.kill(children[0], signal.SIGKILL)
        seen = wait_until(lambda: (answer := get(readyz))[0] == 503 and answer, timeout=10, interval=0.02)
        assert seen[1]["status"] == "unavailable" and seen[1]["checks"]["children"] != "ok", seen
        assert seen[1]["checks"]["postgres"] == "ok"
        wait_until(lambda: get(readyz)[0] == 200, timeout=60)
        now = [pid for pid in children_of(proc.popen.pid) if pid != proc.popen.pid]
        assert children[0] not in now and len(now) == expected, (children, now)
        assert metric(metrics_url, "envoi_process_group_children", group=group, state="ready") == expected
        if name != "api":  # gunicorn's master replaces its workers itself, uncounted
            assert metric(metrics_url, "envoi_process_group_child_restarts_total", group=group) == 1
            assert f"(pid {children[0]}) died (signal SIGKILL)" in proc.log.read_text(errors="replace")
        if name == "smtp-processes":
            login = f"group-{uuid.uuid4().hex[:6]}@{domain['name']}"
            services.accounts.create_credential(account["id"], domain["name"], login.split("@")[0], "group-pass-1")
            rcpt = f"after-restart-{uuid.uuid4().hex[:8]}@inbox.test"
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.starttls(context=ssl._create_unverified_context())
                client.login(login, "group-pass-1")
                client.sendmail(login, [rcpt], f"From: {login}\r\nTo: {rcpt}\r\nSubject: after a restart\r\n\r\nhi\r\n")
            stored = db.execute("SELECT count(*) AS n FROM recipients WHERE address = %s", (rcpt,)).fetchone()
            assert stored["n"] == 1
    finally:
        proc.stop()


# -- the API with a request in flight ------------------------------------------------------------------

@pytest.mark.parametrize("rest_after", [0.2, 2.5])
def test_api_sigterm_with_a_post_in_flight_answers_it_with_its_row_or_not_at_all(tmp_path, settings, domain, api_key,
                                                                                 db, relay, sink, rest_after):
    """A large /messages POST is half sent when the API is told to stop. Its body's rest comes 0.2 s later:
    the request gets its 200, its message is stored and delivered, and the group is gone within 2 s of the
    answer. Or 2.5 s later, past the server's graceful timeout (1 s, granian's or gunicorn's): the worker is
    gone before the commit, so no 200 and nothing stored. Never a 200 without a row."""
    import urllib.parse

    port = free_port()
    proc = Proc("api-inflight", envoi("api", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4"),
                process_env(settings), tmp_path)
    subject = f"in flight {uuid.uuid4().hex[:8]}"
    body = urllib.parse.urlencode({"from": f"s@{domain['name']}", "to": "inflight@dest.test", "subject": subject,
                                   "text": "x" * 600_000}).encode()
    auth = base64.b64encode(f"api:{api_key}".encode()).decode()
    head = (f"POST /v3/{domain['name']}/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    try:
        proc.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=90)
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(head + body[: len(body) // 2])
        time.sleep(0.3)  # a worker thread is reading the body
        stopped = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        exit_seen: list[float] = []  # when the group exited, seen as it happens
        watcher = threading.Thread(target=lambda: (proc.popen.wait(10), exit_seen.append(time.monotonic())),
                                   daemon=True)
        watcher.start()
        time.sleep(rest_after)
        answer = b""
        try:
            sock.sendall(body[len(body) // 2:])
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass  # reset: the worker was stopped with the request unfinished
        answered = time.monotonic()
        watcher.join(10)
        exited = exit_seen[0]
        sock.close()
    finally:
        proc.stop()
    rows = db.execute("SELECT m.message_id, (SELECT count(*) FROM recipients r WHERE r.message_pk = m.id) AS rcpts"
                      " FROM messages m WHERE m.domain_id = %s", (domain["id"],)).fetchall()  # the test's own domain
    status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/1.1 ") else b""
    print(f"rest after {rest_after}s: answer {status or 'none'} {answered - stopped:.2f}s after SIGTERM, group exited"
          f" {exited - stopped:.2f}s after SIGTERM; rows {rows}")
    if status == b"200":
        message_id = json.loads(answer.partition(b"\r\n\r\n")[2])["id"].strip("<>")
        assert [(r["message_id"], r["rcpts"]) for r in rows] == [(message_id, 1)]
        delivered = sink.wait_for(1, timeout=30)
        assert any(f"Subject: {subject}" in m["data"] for m in delivered)
        assert exited - answered <= STOP_WITHIN, proc.output()
    else:
        assert rows == [], "stored without a 200"
        assert exited - stopped <= STOP_WITHIN, proc.output()
    if rest_after < 1:
        assert status == b"200", (answer[:300], proc.output())
    else:
        assert status != b"200"
