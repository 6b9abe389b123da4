"""gunicorn settings for `envoi api` (`-c python:envoi.gunicorn_conf`): the workers' metrics files.

Each worker writes its Prometheus values under PROMETHEUS_MULTIPROC_DIR; the master serves their sum
on the metrics bind `envoi api --metrics-bind` gave (the public listener has no /metrics). A dead
worker's live gauges are dropped from the sums; a directory `envoi api` made for itself is removed
when gunicorn exits (it only ever holds this server's files)."""

from __future__ import annotations

import os

from envoi.infra import metrics_dir
from envoi.infra.metrics import forget_process, serve_directory

METRICS_BIND = "ENVOI_API_METRICS_BIND"  # set by `envoi api --metrics-bind`


def when_ready(server) -> None:
    if bind := os.environ.get(METRICS_BIND):
        serve_directory(bind, os.environ[metrics_dir.VARIABLE])


def child_exit(server, worker) -> None:
    forget_process(worker.pid)


def on_exit(server) -> None:
    metrics_dir.release()
