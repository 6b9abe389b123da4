"""SIGTERM stops every long-running process within 2 s; /healthz and /readyz on each one's metrics bind."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request

import pytest

from tests.support.processes import Proc, envoi, free_port, http_ok, process_env

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
        time.sleep(1)  # past start-up: the loops are running
        assert stop_seconds(proc) <= STOP_WITHIN, proc.output()
    finally:
        proc.stop()
