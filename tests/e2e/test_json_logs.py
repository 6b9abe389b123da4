"""ENVOI_LOG_FORMAT=json: every log line of a process is one JSON object, and one message can be followed
from the SMTP server that accepted it to the relay that delivered it by its message_id."""

from __future__ import annotations

import json
import smtplib
import ssl
import subprocess
import uuid

import pytest

from envoi.dev.sink import Sink
from tests.support.delivery import route
from tests.support.dns_server import DnsServer
from tests.support.processes import ROOT, envoi, free_port, process_env
from tests.support.relay import wait_until

pytestmark = pytest.mark.e2e


def start(argv: list[str], env: dict, stderr_path) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr_path.open("wb"),
                            start_new_session=True)


def records(path) -> list[dict]:
    """Every line of a stderr file, as JSON (fails on a line that is not one object)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_json_logs_follow_one_message_from_smtp_to_the_relay(tmp_path, settings, services, account, domain, db):
    services.accounts.create_credential(account["id"], domain["name"], "jsonlogs", "json-logs-pass-1")
    login = f"jsonlogs@{domain['name']}"
    rcpt_domain = f"json-{uuid.uuid4().hex[:8]}.test"
    rcpt = f"follow@{rcpt_domain}"
    smtp_err, relay_err = tmp_path / "smtp.err", tmp_path / "relay.err"
    port, metrics = free_port(), free_port()
    with Sink() as sink, DnsServer() as dns:
        route(dns, rcpt_domain)
        env = process_env(settings, ENVOI_LOG_FORMAT="json", ENVOI_DNS_RESOLVER=f"127.0.0.1:{dns.port}",
                          ENVOI_MX_PORT=sink.smtp_port, ENVOI_RELAY_HOST=f"relay-json-{uuid.uuid4().hex[:6]}")
        smtp = start(envoi("-v", "smtp", "--bind", "127.0.0.1", "--port", str(port), "--smtps-port", "0",
                           "--var", str(tmp_path)), env, smtp_err)
        relay = start(envoi("-v", "relay", "--metrics-port", str(metrics)), env, relay_err)
        try:
            def send() -> bool:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as conn:
                    conn.starttls(context=ssl._create_unverified_context())
                    conn.login(login, "json-logs-pass-1")
                    conn.sendmail(login, [rcpt], f"From: {login}\r\nTo: {rcpt}\r\nSubject: follow\r\n\r\nx\r\n")
                return True

            wait_until(lambda: _try(send), timeout=90)
            wait_until(lambda: sink.messages(to=rcpt), timeout=60)
            message_id = db.execute("SELECT m.message_id FROM messages m JOIN recipients r ON r.message_pk = m.id"
                                    " WHERE r.address = %s", (rcpt,)).fetchone()["message_id"]
            wait_until(lambda: any(r.get("message_id") == message_id for r in records(relay_err)), timeout=15)
        finally:
            for process in (smtp, relay):
                process.terminate()
                process.wait(10)
        for path, process in ((smtp_err, "smtp"), (relay_err, "relay")):
            lines = records(path)
            assert lines and all(r["process"] == process and r["region"] == settings.region for r in lines)
            assert all({"ts", "level", "logger", "message"} <= set(r) for r in lines)
            about = [r for r in lines if r.get("message_id") == message_id]
            assert about, f"{process} logged nothing about {message_id}"
        assert any("outcome delivered" in r["message"] for r in records(relay_err)
                   if r.get("message_id") == message_id)


def _try(fn) -> bool:
    try:
        return fn()
    except OSError:
        return False
