"""The multiprocess metrics directory of a process group (no prometheus_client import here).

prometheus-client picks its value class once, when first imported: a group's processes must find
PROMETHEUS_MULTIPROC_DIR set before that, so the command that starts the group calls use() first."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
OWNED = "ENVOI_OWNS_METRICS_DIR"  # set when use() made the directory: the group removes it on exit


def use(prefix: str = "envoi-metrics-") -> str:
    """The group's directory, emptied: the one PROMETHEUS_MULTIPROC_DIR names (the operator's, one per
    process group: a second group sharing it would erase the first's values), else a fresh temporary
    one. Exported to the environment, so the group's processes (forked or started) write there."""
    if "prometheus_client.values" in sys.modules and not os.environ.get(VARIABLE):
        raise RuntimeError("prometheus_client was imported before the metrics directory was chosen")
    path = os.environ.get(VARIABLE)
    if not path:
        path = tempfile.mkdtemp(prefix=prefix)
        os.environ[OWNED] = "1"
    shutil.rmtree(path, ignore_errors=True)  # values of processes long gone would be summed in
    os.makedirs(path, exist_ok=True)
    os.environ[VARIABLE] = path
    return path


def release() -> None:
    """At the group's exit: remove the directory if use() made it."""
    if os.environ.get(OWNED) and os.environ.get(VARIABLE):
        shutil.rmtree(os.environ[VARIABLE], ignore_errors=True)
