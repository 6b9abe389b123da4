"""gunicorn settings for `envoi api` (`-c python:envoi.gunicorn_conf`): the workers' metrics files.

Each worker writes its Prometheus values under PROMETHEUS_MULTIPROC_DIR; the master serves their sum
on the metrics bind `envoi api --metrics-bind` gave (the public listener has no /metrics). A dead
worker's live gauges are dropped from the sums; a directory `envoi api` made for itself is removed
when gunicorn exits (it only ever holds this server's files)."""

from __future__ import annotations

import os
import ssl

from envoi.infra import metrics_dir, process_group
from envoi.infra.metrics import GroupCollector, forget_process, serve_directory

METRICS_BIND = "ENVOI_API_METRICS_BIND"  # set by `envoi api --metrics-bind`
PROCESS = "ENVOI_GUNICORN_PROCESS"  # api | tracking, for the logs' "process"
# SIGTERM: a request in flight gets this long to finish before its worker is killed, so the server is
# gone within 2 s (gunicorn's default is 30). Long event streams end with their worker; clients reconnect.
graceful_timeout = 1


def post_fork(server, worker) -> None:
    """A worker's own logs (the app's, not gunicorn's) as ENVOI_LOG_FORMAT says."""
    import logging

    from envoi.infra import log_format
    from envoi.infra.settings import log_format as chosen_format

    log_format.configure(logging.INFO, chosen_format(os.environ), os.environ.get(PROCESS, "api"))


_ready: process_group.ReadyDir | None = None  # the master's: where each worker says it is ready


def on_starting(server) -> None:
    global _ready
    _ready = process_group.ReadyDir()  # before any worker is forked: they inherit the variable


def when_ready(server) -> None:
    if bind := os.environ.get(METRICS_BIND):
        from envoi.infra import health
        from envoi.infra.settings import Settings

        # The group is ready when its stores answer and all its workers run and have loaded the app
        # (a worker's app marks it ready: envoi.api.app's /readyz Health); a dead one counts until
        # the master has replaced it.
        def workers() -> None:
            process_group.check_children(_ready.path, list(server.WORKERS), server.num_workers)

        def status() -> tuple[int, int, None]:  # gunicorn replaces its workers; it is not counted here
            return process_group.count_ready(_ready.path, list(server.WORKERS)), server.num_workers, None

        serve_directory(bind, os.environ[metrics_dir.VARIABLE],
                        health.for_settings(Settings.from_env(), started=True, children=workers),
                        group=GroupCollector(os.environ.get(PROCESS, "api"), status))


def child_exit(server, worker) -> None:
    forget_process(worker.pid)
    if _ready is not None:
        _ready.forget(worker.pid)


def on_exit(server) -> None:
    metrics_dir.release()
    if _ready is not None:
        _ready.close()


def ssl_context(conf, default_ssl_context_factory) -> ssl.SSLContext:
    """`envoi tracking` with TLS: the certificate of ENVOI_TRACKING_TLS_CERT, or the one of the host the
    client names (SNI) from ENVOI_TRACKING_TLS_DIR/<host>.pem, so each tracking host has its own."""
    context = default_ssl_context_factory()
    folder = os.environ.get("ENVOI_TRACKING_TLS_DIR")
    if folder:
        context.sni_callback = _HostCertificates(folder, default_ssl_context_factory)
    return context


class _HostCertificates:
    def __init__(self, folder: str, factory):
        self.folder = folder
        self.factory = factory
        self.contexts: dict[str, ssl.SSLContext | None] = {}

    def __call__(self, sock: ssl.SSLObject, host: str | None, _context) -> None:
        if not host:
            return
        host = host.lower().rstrip(".")
        if host not in self.contexts:
            path = os.path.join(self.folder, f"{host}.pem")
            context = None
            if "/" not in host and not host.startswith(".") and os.path.isfile(path):
                context = self.factory()
                context.load_cert_chain(path)
            self.contexts[host] = context
        if self.contexts[host] is not None:
            sock.context = self.contexts[host]
