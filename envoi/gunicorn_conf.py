"""gunicorn settings for `envoi api` (`-c python:envoi.gunicorn_conf`): the workers' metrics files.

Each worker writes its Prometheus values under PROMETHEUS_MULTIPROC_DIR. A dead worker's live gauges
are dropped from the sums; a directory `envoi api` made for itself is removed when gunicorn exits
(it only ever holds this server's files)."""

from __future__ import annotations

import os
import shutil
import ssl

from envoi.infra.metrics import forget_process

OWNED_METRICS_DIR = "ENVOI_API_OWNS_METRICS_DIR"  # set by `envoi api` when it made the directory


def child_exit(server, worker) -> None:
    forget_process(worker.pid)


def on_exit(server) -> None:
    if os.environ.get(OWNED_METRICS_DIR) and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


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
