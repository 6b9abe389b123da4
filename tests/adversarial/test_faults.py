"""Fault injection on Envoi's real processes: what was accepted is delivered, whatever dies meanwhile.

A stack of real processes (`envoi api` under gunicorn, `envoi smtp`, `envoi relay` delivering to an
in-test sink) takes load while one fault is injected: SIGKILL of an API worker, of the SMTP server,
of the relay; every Envoi connection to Postgres terminated (pg_terminate_backend, only those of
these processes: the machine's Postgres server is shared and never restarted); the test Redis db
flushed. Each test prints accepted / delivered / lost / duplicated and asserts lost == 0.
Select with `-m faults`; about a minute in all.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import socket
import ssl
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg
import pytest
import requests

from envoi.dev.sink import Sink
from tests.conftest import flush_redis
from tests.support.processes import Proc, envoi, free_port, http_ok, process_env, stop_all
from tests.support.relay import wait_until

pytestmark = pytest.mark.faults
APP_NAME = "envoi-faults"  # libpq's PGAPPNAME for the children: how their connections are told apart
MESSAGE_ID = re.compile(r"^Message-ID:\s*<([^>]+)>", re.M | re.I)
PASSWORD = "fault-pass-1"


class Stack:
    def __init__(self, settings, sink: Sink, tmp: Path):
        self.settings, self.sink, self.tmp = settings, sink, tmp
        self.api_port, self.smtp_port, self.smtps_port = free_port(), free_port(), free_port()
        self.env = process_env(settings, ENVOI_SMTP_ROUTE=f"127.0.0.1:{sink.smtp_port}", ENVOI_RELAY_BATCH=100,
                               ENVOI_RELAY_HOST=f"faults-{uuid.uuid4().hex[:6]}", ENVOI_RETRY_SCHEDULE="1,2",
                               PGAPPNAME=APP_NAME)
        self.procs: dict[str, Proc] = {}
        self.generation = Counter()

    def start(self, name: str) -> Proc:
        self.generation[name] += 1
        argv = {"api": envoi("api", "--bind", f"127.0.0.1:{self.api_port}", "--workers", "2", "--threads", "4"),
                "smtp": envoi("smtp", "--port", str(self.smtp_port), "--smtps-port", str(self.smtps_port),
                              "--var", str(self.tmp)),
                "relay": envoi("relay", "--metrics-port", "0")}[name]
        proc = self.procs[name] = Proc(f"{name}{self.generation[name]}", argv, self.env, self.tmp)
        check = {"api": lambda: http_ok(f"http://127.0.0.1:{self.api_port}/healthz"),
                 "smtp": lambda: socket.create_connection(("127.0.0.1", self.smtp_port), timeout=1).close() or True,
                 "relay": lambda: True}[name]
        proc.wait_ready(check, timeout=40)
        return proc

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(10)

    def stop(self) -> None:
        stop_all(self.procs.values())


@pytest.fixture(scope="module")
def sink():
    with Sink(max_messages=20000) as s:
        yield s


@pytest.fixture(scope="module")
def stack(settings, sink, tmp_path_factory):
    s = Stack(settings, sink, tmp_path_factory.mktemp("faults"))
    try:
        for name in ("api", "smtp", "relay"):
            s.start(name)
        yield s
    finally:
        s.stop()


@pytest.fixture
def sender(services, account, domain):
    _, key = services.accounts.create_key(account["id"], "admin")
    services.accounts.create_credential(account["id"], domain["name"], "app", PASSWORD)
    return {"domain": domain["name"], "key": key, "login": f"app@{domain['name']}"}


# load ---------------------------------------------------------------------------------------------
class Load(threading.Thread):
    """Sends `n` messages (one recipient each) over HTTP or SMTP; keeps what was acknowledged."""

    def __init__(self, stack: Stack, sender: dict, n: int, via: str, tag: str):
        super().__init__(daemon=True)
        self.stack, self.sender, self.n, self.via, self.tag = stack, sender, n, via, tag
        self.accepted: set[tuple[str, str]] = set()
        self.errors = 0
        self.sent = 0
        self.why: Counter = Counter()  # what the refused or cut-off attempts got

    def run(self) -> None:
        (self._http if self.via == "http" else self._smtp)()

    def _http(self) -> None:
        url = f"http://127.0.0.1:{self.stack.api_port}/v3/{self.sender['domain']}/messages"
        session = requests.Session()
        session.auth = ("api", self.sender["key"])
        for i in range(self.n):
            to = f"r{i}@d{i % 20}.{self.tag}.test"
            try:
                resp = session.post(url, data={"from": f"s@{self.sender['domain']}", "to": to, "subject": f"m{i}",
                                               "text": "fault injection"}, timeout=15)
                if resp.status_code == 200:
                    self.accepted.add((resp.json()["id"].strip("<>"), to))
                else:
                    self.errors += 1
                    self.why[f"HTTP {resp.status_code}"] += 1
            except requests.RequestException as ex:
                self.errors += 1
                self.why[type(ex).__name__] += 1
                session = requests.Session()
                session.auth = ("api", self.sender["key"])
                time.sleep(0.05)
            self.sent += 1

    def _smtp(self) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the dev certificate
        client = None
        for i in range(self.n):
            to = f"r{i}@d{i % 20}.{self.tag}.test"
            mid = f"{self.tag}-{i}-{uuid.uuid4().hex[:8]}@{self.sender['domain']}"
            data = (f"From: s@{self.sender['domain']}\r\nTo: {to}\r\nSubject: m{i}\r\nMessage-ID: <{mid}>\r\n\r\n"
                    "fault injection\r\n")
            try:
                if client is None:
                    client = smtplib.SMTP("127.0.0.1", self.stack.smtp_port, timeout=15)
                    client.starttls(context=ctx)
                    client.login(self.sender["login"], PASSWORD)
                client.sendmail(self.sender["login"], [to], data)
                self.accepted.add((mid, to))
            except (OSError, smtplib.SMTPException) as ex:
                self.errors += 1
                self.why[str(getattr(ex, "smtp_code", "")) or type(ex).__name__] += 1
                client = None
                time.sleep(0.1)
            self.sent += 1
        if client is not None:
            client.quit()


def start_load(stack, sender, n: int, via: str, tag: str) -> Load:
    load = Load(stack, sender, n, via, tag)
    load.start()
    return load


def report(name: str, stack: Stack, load: Load, allow_duplicates: int = 0) -> None:
    load.join(120)
    assert not load.is_alive()
    assert len(load.accepted) > load.n // 2, f"too little was accepted ({len(load.accepted)}): nothing was tested"

    def seen() -> Counter:
        counts: Counter = Counter()
        for m in stack.sink.messages():
            match = MESSAGE_ID.search(m["data"])
            for rcpt in m["rcpt_tos"]:
                counts[(match.group(1) if match else "", rcpt)] += 1
        return counts

    with contextlib.suppress(AssertionError):  # reported below
        wait_until(lambda: load.accepted <= set(seen()), timeout=60, interval=0.3)
    counts = seen()
    delivered = [k for k in load.accepted if counts[k]]
    lost = load.accepted - set(counts)
    duplicated = [k for k in load.accepted if counts[k] > 1]
    print(f"\n{name}: sent {load.sent}, accepted {len(load.accepted)}, delivered {len(delivered)}, "
          f"lost {len(lost)}, duplicated {len(duplicated)}, refused or cut off {load.errors} {dict(load.why)}")
    assert not lost
    assert len(duplicated) <= allow_duplicates


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


# faults -------------------------------------------------------------------------------------------
def test_sigkill_of_an_api_worker_mid_load(stack, sender):
    load = start_load(stack, sender, 300, "http", "apikill")
    wait_until(lambda: len(load.accepted) >= 80, timeout=40, interval=0.02)
    workers = children(stack.procs["api"].popen.pid)
    assert workers, "gunicorn has no workers"
    os.kill(workers[0], signal.SIGKILL)  # the master starts another
    report("SIGKILL of an API worker", stack, load)


def test_sigkill_of_the_smtp_server_mid_load(stack, sender):
    load = start_load(stack, sender, 200, "smtp", "smtpkill")
    wait_until(lambda: len(load.accepted) >= 60, timeout=40, interval=0.02)
    stack.kill("smtp")
    time.sleep(0.5)
    stack.start("smtp")
    report("SIGKILL of the SMTP server", stack, load)


def test_sigkill_of_the_relay_mid_load(stack, sender):
    load = start_load(stack, sender, 300, "http", "relaykill")
    wait_until(lambda: len(load.accepted) >= 150, timeout=40, interval=0.02)
    stack.kill("relay")
    stack.start("relay")  # same relay host: it takes the dead one's leases back at once
    # A message the killed relay had sent but not yet recorded is sent again: at most one batch in flight.
    report("SIGKILL of the relay", stack, load, allow_duplicates=2 * 100)


def test_postgres_connections_terminated_mid_load(stack, sender, settings):
    load = start_load(stack, sender, 300, "http", "pgkill")
    wait_until(lambda: len(load.accepted) >= 80, timeout=40, interval=0.02)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        killed = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                              "WHERE application_name = %s AND datname = current_database()", (APP_NAME,)).fetchone()[0]
    assert killed > 0, "no Envoi connection was found to terminate"
    print(f"\nterminated {killed} Postgres connections of the API, SMTP server and relay")
    report("Postgres connections terminated", stack, load, allow_duplicates=2 * 100)


def test_redis_flushed_mid_load(stack, sender, settings):
    load = start_load(stack, sender, 300, "http", "flush")
    wait_until(lambda: len(load.accepted) >= 80, timeout=40, interval=0.02)
    # FLUSHDB of the test's own Redis db: the Redis server is shared with other test runs on this machine.
    flush_redis(settings.redis_url)
    report("Redis flushed", stack, load)

