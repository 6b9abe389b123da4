"""Prometheus metrics: one registry per process, names ending in _total or _seconds.

A process group (gunicorn's workers, `envoi smtp --processes N`, `envoi worker --processes N`) uses
prometheus-client's multiprocess mode: every process writes its values under PROMETHEUS_MULTIPROC_DIR
(see envoi.infra.metrics_dir, which must run before this module is imported) and the one /metrics of
the group sums them. /metrics is only served on a metrics bind of its own (serve()), never on a public
listener."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401  (re-exported)
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)


class Metrics:
    """Process metrics. With `multiprocess_dir` (gunicorn's several workers), values live in files
    there and render() aggregates every worker's, so /metrics is the same whichever worker answers."""

    def __init__(self, registry: CollectorRegistry | None = None, multiprocess_dir: str | None = None):
        self.multiprocess_dir = multiprocess_dir
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.accepted = Counter("envoi_messages_accepted_total", "Recipients accepted into the queue",
                                ["method"], registry=r)
        self.delivered = Counter("envoi_messages_delivered_total", "Recipients delivered", registry=r)
        self.failed = Counter("envoi_messages_failed_total", "Delivery failures by severity and bounce class",
                              ["severity", "bounce_class"], registry=r)
        self.latency = Histogram("envoi_accept_to_delivered_seconds", "Time from accept to delivery",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.dkim_seconds = Histogram("envoi_dkim_sign_seconds", "Time to DKIM-sign one message",
                                      buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1), registry=r)
        self.queue_scheduled = Gauge("envoi_queue_scheduled", "Recipients queued (due or not)",
                                     multiprocess_mode="livesum", registry=r)
        self.queue_due = Gauge("envoi_queue_due", "Recipients due for an attempt now",
                               multiprocess_mode="livesum", registry=r)
        self.queue_ready = Gauge("envoi_queue_ready", "Deliveries waiting in the relay's ready queues",
                                 multiprocess_mode="livesum", registry=r)
        self.connections = Gauge("envoi_smtp_connections", "Open outbound SMTP sessions", ["destination"],
                                 multiprocess_mode="livesum", registry=r)
        self.chained_envelopes = Counter("envoi_smtp_chained_envelopes_total", "Envelopes sent behind the"
                                         " previous message's final dot on a pipelining session (RFC 2920)",
                                         registry=r)
        self.inbound_reports = Counter("envoi_inbound_reports_total", "Inbound DSN/ARF reports by kind"
                                       " (dsn|arf|other) and result (recorded|dropped|error)",
                                       ["kind", "result"], registry=r)
        self.webhook_attempts = Counter("envoi_webhook_attempts_total", "Webhook delivery attempts by outcome"
                                        " (delivered|retry|rejected|failed)", ["outcome"], registry=r)
        self.webhook_seconds = Histogram("envoi_webhook_attempt_seconds", "Time of one webhook POST",
                                         buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=r)
        self.webhook_backlog = Gauge("envoi_webhook_backlog", "Webhook deliveries due and not in flight",
                                     multiprocess_mode="livesum", registry=r)
        self.webhook_inflight = Gauge("envoi_webhook_inflight", "Webhook deliveries this dispatcher process holds"
                                      " (claimed, being sent, or their result being written)",
                                      multiprocess_mode="livesum", registry=r)
        self.webhook_account_backlog = Gauge(
            "envoi_webhook_account_backlog", "Webhook deliveries due and not in flight, per account (the accounts"
            " with the most, over the deliveries due soonest)", ["account"], multiprocess_mode="livemax", registry=r)
        self.webhook_account_lag = Gauge(
            "envoi_webhook_account_lag_seconds", "How long the account's oldest due webhook delivery has been due",
            ["account"], multiprocess_mode="livemax", registry=r)
        self.webhook_endpoints_failing = Gauge("envoi_webhook_endpoints_failing", "Webhook endpoints (per account)"
                                               " whose attempts fail since their last success",
                                               multiprocess_mode="livemax", registry=r)
        self.webhook_endpoint_failing = Gauge(
            "envoi_webhook_endpoint_failing_seconds", "How long a failing webhook endpoint has been failing (the"
            " longest failing ones)", ["account", "endpoint"], multiprocess_mode="livemax", registry=r)
        self.egress_deliveries = Counter(
            "envoi_egress_deliveries_total", "Deliveries per egress IP and why that IP was chosen (sending-ip,"
            " sending-ip-pool, domain-ip, domain-pool, shared, overflow = past a warm-up cap, default = OS address)",
            ["ip", "via"], registry=r)
        self.tls_sessions = Counter(
            "envoi_tls_sessions_total", "Outbound SMTP sessions by TLS policy (sts | no-policy-found) and result"
            " (success or an RFC 8460 result type: starttls-not-supported, certificate-host-mismatch, ...)",
            ["policy", "result"], registry=r)
        self.mta_sts_fetches = Counter("envoi_mta_sts_fetches_total", "MTA-STS policy fetches by result (fetched"
                                       " or an RFC 8460 failure type)", ["result"], registry=r)
        self.egress_unavailable = Counter("envoi_egress_unavailable_total",
                                          "Deliveries for which no egress IP could send now", [], registry=r)
        # For the alert rules (infra/deploy/prometheus/alerts.yml).
        self.queue_oldest_due = Gauge("envoi_queue_oldest_due_seconds", "How long the longest-waiting due"
                                      " recipient has been due (0: none due)", multiprocess_mode="livemax",
                                      registry=r)
        self.store_errors = Counter("envoi_store_errors_total", "Operations that failed because Postgres or Redis"
                                    " was unavailable (store = postgres | redis)", ["store"], registry=r)
        self.certificate_expiry = Gauge("envoi_tls_certificate_expiry_timestamp_seconds", "When the listener's"
                                        " TLS certificate expires (Unix time)", ["listener"],
                                        multiprocess_mode="livemin", registry=r)
        self.task_runs = Counter("envoi_scheduler_task_runs_total", "Periodic task runs by task and result"
                                 " (success | error)", ["task", "result"], registry=r)
        self.task_last_success = Gauge("envoi_scheduler_task_last_success_timestamp_seconds", "When the task last"
                                       " ran without error (Unix time)", ["task"], multiprocess_mode="livemax",
                                       registry=r)

    def observe_delivered(self, seconds: float) -> None:
        self.delivered.inc()
        self.latency.observe(max(seconds, 0.0))

    def observe_webhook(self, outcome: str, seconds: float) -> None:
        self.webhook_attempts.labels(outcome).inc()
        self.webhook_seconds.observe(seconds)

    def serve(self, bind: str | int, health=None, group=None) -> ThreadingHTTPServer:
        """/metrics on `bind` (HOST:PORT, or a port on 127.0.0.1): a private listener of its own, never
        the public API's. In multiprocess mode it answers for the whole process group. With `health`
        (envoi.infra.health.Health), /healthz and /readyz too; with `group` (a GroupCollector: this is
        the group's parent), the group's children metrics."""
        return serve(bind, lambda: self.render(group), health)

    def render(self, group=None) -> bytes:
        if self.multiprocess_dir:
            return render_directory(self.multiprocess_dir, group)
        return generate_latest(self.registry)


def render_directory(directory: str, group=None) -> bytes:
    """The exposition of every process's values under `directory`, summed (and the group's own, which
    only its parent knows: never in the files, so never summed)."""
    registry = CollectorRegistry()
    StartedWorkersCollector(registry, path=directory)
    if group is not None:
        registry.register(group)
    return generate_latest(registry)


class GroupCollector:
    """A process group's children, as its parent sees them at scrape time: envoi_process_group_children
    {state="ready"|"expected"} and envoi_process_group_child_restarts_total (children replaced after
    dying; left out where the parent does not count them, gunicorn's master). `status` gives
    (ready, expected, restarts or None). Children only: a parent that is itself one of the group's
    processes (worker, webhooks dispatch) is not counted (its own /readyz says whether it is ready)."""

    def __init__(self, name: str, status):
        self.name = name
        self.status = status

    def collect(self):
        ready, expected, restarts = self.status()
        children = GaugeMetricFamily("envoi_process_group_children", "A process group's children: expected"
                                     " (--processes), and alive and ready", labels=["group", "state"])
        children.add_metric([self.name, "ready"], ready)
        children.add_metric([self.name, "expected"], expected)
        yield children
        if restarts is not None:
            restarted = CounterMetricFamily("envoi_process_group_child_restarts", "Children of a process group"
                                            " replaced after dying while the group was not stopping",
                                            labels=["group"])
            restarted.add_metric([self.name], restarts)
            yield restarted


class StartedWorkersCollector(multiprocess.MultiProcessCollector):
    """Reads every worker's files except one still being created: prometheus-client opens a file
    empty and only then sizes it, and reading it in between fails the whole scrape (a /metrics 500
    while a gunicorn worker starts). A file's size only goes from 0 to its final size, so skipping
    empty ones leaves no window."""

    def __init__(self, registry: CollectorRegistry, path: str):
        self.path = path  # before registering: a registry may collect at once
        super().__init__(registry, path=path)

    def collect(self):
        files = [f for f in glob.glob(os.path.join(self.path, "*.db")) if _size(f) > 0]
        return self.merge(files, accumulate=True)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:  # a dead worker's live gauges, removed by forget_process()
        return 0


def serve(bind: str | int, render, health=None, guard=None) -> ThreadingHTTPServer:
    """Answer GET /metrics with render() on `bind` from a daemon thread, and with `health` GET /healthz
    (200 while the process answers) and GET /readyz (200 or 503, each check's result as JSON);
    anything else is a 404. `guard` (a lock) is held while answering: a process that forks while this
    thread runs takes it first, so a child never inherits a lock this thread held mid-answer."""
    host, port = parse_bind(bind)
    guard = guard or contextlib.nullcontext()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/metrics":
                with guard:
                    body = render()
                self._answer(200, CONTENT_TYPE, body)
            elif path == "/healthz" and health is not None:
                self._answer(200, "application/json", b'{"status": "ok"}')
            elif path == "/readyz" and health is not None:
                with guard:
                    ready, checks = health.readiness()
                body = json.dumps({"status": "ok" if ready else "unavailable", "checks": checks}).encode()
                self._answer(200 if ready else 503, "application/json", body)
            else:
                self.send_error(404)

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args) -> None:  # one line per scrape is noise
            pass

    server_class = _Server6 if ":" in host else ThreadingHTTPServer
    server = server_class((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def serve_directory(bind: str | int, directory: str, health=None, group=None, guard=None) -> ThreadingHTTPServer:
    """/metrics summing every process's files under `directory` (gunicorn's master, the parent of
    `--processes N`), without registering metrics of its own (`group`: a GroupCollector)."""
    return serve(bind, lambda: render_directory(directory, group), health, guard)


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def parse_bind(bind: str | int) -> tuple[str, int]:
    """"HOST:PORT", "[V6]:PORT" or a bare port (on 127.0.0.1)."""
    text = str(bind).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        return "127.0.0.1", int(text)
    return (host.strip("[]") or "0.0.0.0"), int(port)


def forget_process(pid: int) -> None:
    """A multiprocess-mode worker exited: its live gauges no longer count (prometheus-client's files)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
