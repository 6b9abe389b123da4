"""gunicorn settings for `envoi api` (`-c python:envoi.gunicorn_conf`): the workers' metrics files.

Each worker writes its Prometheus values under PROMETHEUS_MULTIPROC_DIR. A dead worker's live gauges
are dropped from the sums; a directory `envoi api` made for itself is removed when gunicorn exits
(it only ever holds this server's files)."""

from __future__ import annotations

import os
import shutil

from envoi.infra.metrics import forget_process

OWNED_METRICS_DIR = "ENVOI_API_OWNS_METRICS_DIR"  # set by `envoi api` when it made the directory


def child_exit(server, worker) -> None:
    forget_process(worker.pid)


def on_exit(server) -> None:
    if os.environ.get(OWNED_METRICS_DIR) and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
