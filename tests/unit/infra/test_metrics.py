"""/metrics in gunicorn's multiprocess mode while a worker is still starting."""

from __future__ import annotations

import json

from prometheus_client.mmap_dict import MmapedDict

from envoi.infra.metrics import Metrics


def test_a_worker_still_creating_its_metrics_file_does_not_break_the_scrape(tmp_path):
    # A started worker's counter file, as prometheus-client writes it.
    started = MmapedDict(str(tmp_path / "counter_101.db"))
    key = json.dumps(("envoi_messages_delivered", "envoi_messages_delivered_total", {}, "Recipients delivered"))
    started.write_value(key, 3.0, 0.0)
    started.close()
    # Another worker has opened its file but not yet sized it (prometheus-client opens, then truncates
    # to its initial size): the file is empty for that moment. Seen as a 500 from /metrics right
    # after `envoi api` answered /healthz (tests/e2e/test_end_to_end.py under load).
    (tmp_path / "counter_102.db").touch()

    text = Metrics(multiprocess_dir=str(tmp_path)).render().decode()

    assert "envoi_messages_delivered_total 3.0" in text


def test_serve_exposes_the_process_metrics_on_loopback():
    import socket
    import urllib.request

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics = Metrics()
    metrics.accepted.labels("smtp").inc(3)
    metrics.serve(port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'envoi_messages_accepted_total{method="smtp"} 3.0' in body.splitlines()


def test_serve_takes_a_host_port_bind_and_answers_only_metrics():
    import socket
    import urllib.error
    import urllib.request

    import pytest

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics = Metrics()
    metrics.store_errors.labels("redis").inc()
    server = metrics.serve(f"127.0.0.1:{port}")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'envoi_store_errors_total{store="redis"} 1.0' in body.splitlines()
        with pytest.raises(urllib.error.HTTPError) as other:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
        assert other.value.code == 404
    finally:
        server.shutdown()
