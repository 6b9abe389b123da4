"""/metrics of a process group sums every process's values, and is never on the public listener."""

from __future__ import annotations

import re
import smtplib
import ssl
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from mailgun.client import Client

from tests.support.processes import Proc, envoi, free_port, http_ok, process_env
from tests.support.relay import wait_until

pytestmark = pytest.mark.e2e
N = 24


def metric(text: str, line_start: str) -> float:
    """The value of the one sample whose line starts with `line_start` (name and labels), 0 if absent."""
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def scrape(url: str) -> str:
    return urllib.request.urlopen(url, timeout=30).read().decode()


def pids_with_files(directory) -> set[str]:
    return {m.group(1) for f in directory.glob("counter_*.db") if (m := re.match(r"counter_(\d+)\.db", f.name))}


def test_api_metrics_sum_every_worker_on_the_metrics_bind_only(tmp_path, settings, domain, api_key):
    port, metrics_port = free_port(), free_port()
    directory = tmp_path / "api-metrics"
    api = Proc("api", envoi("api", "--bind", f"127.0.0.1:{port}", "--workers", "3", "--threads", "2",
                            "--metrics-port", str(metrics_port)),
               process_env(settings, PROMETHEUS_MULTIPROC_DIR=directory), tmp_path)
    try:
        api.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=90)  # a loaded machine
        with pytest.raises(urllib.error.HTTPError) as refused:  # the public listener has no /metrics
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert refused.value.code == 404
        client = Client(auth=("api", api_key), api_url=f"http://127.0.0.1:{port}/v3/")

        def send(i: int) -> int:
            return client.messages.create(domain=domain["name"], data={
                "from": f"app@{domain['name']}", "to": f"r{i}@inbox.test", "subject": "m", "text": "x"}).status_code

        with ThreadPoolExecutor(8) as pool:  # concurrent requests: gunicorn spreads them over its workers
            assert set(pool.map(send, range(N))) == {200}
        text = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert metric(text, 'envoi_messages_accepted_total{method="http"}') == N
        assert len(pids_with_files(directory)) >= 2  # more than one worker counted some of them
    finally:
        api.stop()


def test_smtp_processes_metrics_sum_every_server_process(tmp_path, settings, services, account, domain):
    services.accounts.create_credential(account["id"], domain["name"], "metrics", "metrics-pass-1")
    port, metrics_port = free_port(), free_port()
    directory = tmp_path / "smtp-metrics"
    smtp = Proc("smtp", envoi("smtp", "--bind", "127.0.0.1", "--port", str(port), "--smtps-port", "0",
                              "--processes", "3", "--var", str(tmp_path), "--metrics-port", str(metrics_port)),
                process_env(settings, PROMETHEUS_MULTIPROC_DIR=directory), tmp_path)
    try:
        smtp.wait_ready(lambda: smtp.output().count("smtp: region") >= 3, timeout=90)
        login = f"metrics@{domain['name']}"

        def send(i: int) -> None:  # one connection each: the kernel spreads them over the processes
            ctx = ssl._create_unverified_context()
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as conn:
                conn.starttls(context=ctx)
                conn.login(login, "metrics-pass-1")
                conn.sendmail(login, [f"r{i}@inbox.test"], f"From: {login}\r\nSubject: m\r\n\r\nx\r\n")

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(send, range(N)))
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_until(lambda: metric(scrape(url), 'envoi_messages_accepted_total{method="smtp"}') == N, timeout=30)
        assert len(pids_with_files(directory)) >= 2
        expiry = metric(scrape(url), 'envoi_tls_certificate_expiry_timestamp_seconds{listener="smtp"}')
        assert expiry > 0  # the dev certificate's notAfter
    finally:
        smtp.stop()
