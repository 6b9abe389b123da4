"""/healthz and /readyz on a metrics bind: readiness follows the stores and the process's own state."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from envoi.infra.health import Health, for_settings, store_checks
from envoi.infra.metrics import Metrics
from tests.support.processes import free_port


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as ex:
        return ex.code, json.loads(ex.read())


def test_readyz_is_503_until_started_and_once_stopping(settings):
    health = for_settings(settings)
    port = free_port()
    server = Metrics().serve(port, health)
    try:
        base = f"http://127.0.0.1:{port}"
        assert get(f"{base}/healthz") == (200, {"status": "ok"})
        status, body = get(f"{base}/readyz")
        assert status == 503 and body["checks"]["process"] == "starting"
        health.mark_started()
        status, body = get(f"{base}/readyz")
        assert status == 200 and body["checks"] == {"process": "ok", "postgres": "ok", "redis": "ok"}
        health.mark_stopping()
        status, body = get(f"{base}/readyz")
        assert status == 503 and body["checks"]["process"] == "stopping"
    finally:
        server.shutdown()


def test_readyz_names_the_store_that_does_not_answer(settings):
    dead = free_port()  # nothing listens there
    health = Health(store_checks(settings.database_url, f"redis://127.0.0.1:{dead}/0"), started=True)
    ready, checks = health.readiness()
    assert not ready
    assert checks["postgres"] == "ok" and checks["redis"].startswith("ConnectionError")


def test_metrics_bind_without_health_has_no_probes():
    port = free_port()
    server = Metrics().serve(port)
    try:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10)
            raise AssertionError("a /readyz without health checks")
        except urllib.error.HTTPError as ex:
            assert ex.code == 404
    finally:
        server.shutdown()
