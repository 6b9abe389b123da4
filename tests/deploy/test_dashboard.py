"""The Grafana dashboard against a real Prometheus scraping a real region: every Envoi process serves
/metrics on its metrics port, Prometheus (Debian's) scrapes them every second while mail is sent,
delivered, deferred and bounced, a webhook is posted and a report reaches the inbound MX; then every
panel's query, evaluated through Prometheus' HTTP API, returns data."""

from __future__ import annotations

import contextlib
import json
import smtplib
import ssl
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis
from mailgun.client import Client

from envoi import runtime
from tests.support.databases import drop_database, migrated_database
from tests.support.processes import Proc, envoi, free_port, http_ok, process_env, stop_all
from tests.support.prometheus import DEPLOY, Prometheus
from tests.support.region_routing import free_redis_url
from tests.support.relay import wait_until
from tests.support.webhook_receiver import Receiver

pytestmark = pytest.mark.e2e
DASHBOARD = DEPLOY / "grafana" / "envoi.json"


def metric(text: str, sample: str) -> float:
    return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample + " ")), 0.0)


def panel_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel["targets"]]


@pytest.fixture
def region(settings):
    """A region of its own (database and Redis db): the scheduler's sweeps touch no other test's rows."""
    dsn = migrated_database("envoi_test_mon")
    redis_url = free_redis_url()
    own = settings.replace(database_url=dsn, redis_url=redis_url, webhook_allow=("127.0.0.1/32",))
    services = runtime.build(own, pool_size=2)
    try:
        yield own, services
    finally:
        services.close()
        redis.Redis.from_url(redis_url).flushdb()
        drop_database(dsn)


def test_every_dashboard_panel_returns_data_from_a_running_region(tmp_path: Path, region):
    settings, services = region
    account = services.accounts.create_account("monitoring")
    domain = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.example.test",
                                          dkim_key_size=1024, verified=True)
    _, api_key = services.accounts.create_key(account["id"], "admin")
    services.accounts.create_credential(account["id"], domain["name"], "app", "monitoring-pass-1")
    ports = {name: free_port() for name in ("api", "smtp", "inbound", "sink_smtp", "sink_http", "dns", "api_m",
                                            "smtp_m", "inbound_m", "worker_m", "webhooks_m", "scheduler_m", "relay_m")}
    zone = [["inbox.test", "MX", "10 mx.inbox.test."], ["bounce.test", "MX", "10 mx.inbox.test."],
            ["later.test", "MX", "10 mx.inbox.test."], ["mx.inbox.test", "A", "127.0.0.1"],
            [f"{domain['dkim_selector']}._domainkey.{domain['name']}", "TXT",
             f"v=DKIM1; k=rsa; p={domain['dkim_public_key']}"]]
    (tmp_path / "zone.json").write_text(json.dumps(zone))
    api_url = f"http://127.0.0.1:{ports['api']}"
    env = process_env(settings, ENVOI_PUBLIC_URL=api_url, ENVOI_DNS_RESOLVER=f"127.0.0.1:{ports['dns']}",
                      ENVOI_MX_PORT=ports["sink_smtp"], ENVOI_WEBHOOK_ALLOW="127.0.0.1/32",
                      ENVOI_INBOUND_PORT=ports["inbound"])
    commands = {
        "dns": [sys.executable, "-m", "tests.support.dns_server", "--port", str(ports["dns"]), "--zone",
                str(tmp_path / "zone.json")],
        "sink": envoi("sink", "--smtp", f"127.0.0.1:{ports['sink_smtp']}", "--http", f"127.0.0.1:{ports['sink_http']}"),
        "api": envoi("api", "--bind", f"127.0.0.1:{ports['api']}", "--workers", "2", "--metrics-port", str(ports["api_m"])),
        "relay": envoi("relay", "--metrics-port", str(ports["relay_m"])),
        "smtp": envoi("smtp", "--bind", "127.0.0.1", "--port", str(ports["smtp"]), "--smtps-port", "0", "--processes",
                      "2", "--var", str(tmp_path), "--metrics-port", str(ports["smtp_m"])),
        "inbound": envoi("inbound", "--port", str(ports["inbound"]), "--metrics-port", str(ports["inbound_m"])),
        "worker": envoi("worker", "--processes", "2", "--metrics-port", str(ports["worker_m"])),
        "webhooks": envoi("webhooks", "dispatch", "--processes", "2", "--metrics-port", str(ports["webhooks_m"])),
        "scheduler": envoi("scheduler", "--metrics-port", str(ports["scheduler_m"])),
    }
    targets = {f"envoi-{name}": [f"127.0.0.1:{ports[name + '_m']}"]
               for name in ("api", "relay", "smtp", "inbound", "worker", "webhooks", "scheduler")}
    procs, prometheus = [], None
    try:
        for name, argv in commands.items():
            procs.append(Proc(name, argv, env, tmp_path))
        # Prometheus starts with them (a target not up yet is scraped again every second), not after them.
        (tmp_path / "prometheus").mkdir()
        prometheus = Prometheus(tmp_path / "prometheus", targets)
        sink = procs[1]
        sink.wait_ready(lambda: http_ok(f"http://127.0.0.1:{ports['sink_http']}/stats"), timeout=90)
        script = json.dumps({"rcpt": {"*@bounce.test": "550 5.1.1 No such user",
                                      "*@later.test": "451 4.3.0 Try again later"}}).encode()
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{ports['sink_http']}/script", data=script,
                                                      headers={"Content-Type": "application/json"}), timeout=5)
        for proc, name in zip(procs[2:], ("api", "relay", "smtp", "inbound", "worker", "webhooks", "scheduler"), strict=True):
            proc.wait_ready(lambda name=name: http_ok(f"http://127.0.0.1:{ports[name + '_m']}/readyz"), timeout=90)
        # a group is ready once its children are; the API port is checked too, as a client sees it
        procs[2].wait_ready(lambda: http_ok(f"{api_url}/healthz"), timeout=90)
        prometheus.wait_ready(timeout=60)

        with Receiver() as receiver:
            # a webhook on deliveries, posted by the dispatcher to the loopback receiver
            services.webhooks.create(domain, "delivered", [receiver.url("/hook")])
            client = Client(auth=("api", api_key), api_url=f"{api_url}/v3/")
            for to in ("a@inbox.test", "b@inbox.test", "c@bounce.test", "d@later.test"):
                resp = client.messages.create(domain=domain["name"], data={
                    "from": f"app@{domain['name']}", "to": to, "subject": "monitoring", "text": "hello"})
                assert resp.status_code == 200, resp.text
            login = f"app@{domain['name']}"
            with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=60) as conn:
                conn.starttls(context=ssl._create_unverified_context())
                conn.login(login, "monitoring-pass-1")
                conn.sendmail(login, ["e@inbox.test"], f"From: {login}\r\nTo: e@inbox.test\r\nSubject: s\r\n\r\nhi\r\n")
            with smtplib.SMTP("127.0.0.1", ports["inbound"], timeout=60) as conn:  # a report to postmaster@
                conn.sendmail("mailer-daemon@inbox.test", [f"postmaster@{domain['name']}"],
                              "From: mailer-daemon@inbox.test\r\nSubject: hello postmaster\r\n\r\nnot a DSN\r\n")
            # three deliveries (a@, b@ by HTTP, e@ by SMTP), each posted once by one of the dispatcher's
            # processes: the dispatcher's one /metrics counts them all
            wait_until(lambda: len(receiver.got("/hook")) >= 3, timeout=120)
            worker_metrics = f"http://127.0.0.1:{ports['webhooks_m']}/metrics"
            wait_until(lambda: metric(urllib.request.urlopen(worker_metrics, timeout=5).read().decode(),
                                      'envoi_webhook_attempts_total{outcome="delivered"}') == 3, timeout=30)

        def every_target_up() -> bool:
            health = prometheus.targets_up()
            return len(health) == len(targets) and set(health.values()) == {"up"}

        wait_until(every_target_up, timeout=60)
        empty: list[tuple[str, str]] = []

        def every_panel_has_data() -> bool:
            empty[:] = [(title, expr) for title, expr in panel_queries() if not prometheus.query(expr)]
            return not empty

        with contextlib.suppress(AssertionError):  # `empty` names the panels, below
            wait_until(every_panel_has_data, timeout=90, interval=1.0)
    except Exception:
        for proc in procs:
            print(f"--- {proc.name}\n{proc.output()}")
        raise
    finally:
        if prometheus is not None:
            prometheus.stop()
        stop_all(reversed(procs))
    assert not empty, f"panels whose query returns no data: {empty}"
