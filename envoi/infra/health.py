"""Liveness and readiness of one process, answered on its private metrics bind (/healthz, /readyz).

Liveness is "the process answers". Readiness is "started, not stopping, and its stores answer": each
probe opens a connection of its own (2 s to connect), so a pool that is full or poisoned never makes a
probe hang, and a probe never takes a connection the work needs."""

from __future__ import annotations

import threading
from collections.abc import Callable

from envoi.infra import db as db_infra
from envoi.infra import process_group
from envoi.infra import redis as redis_infra

Check = Callable[[], None]  # raises when the thing it checks is not usable


class Health:
    def __init__(self, checks: dict[str, Check] | None = None, *, started: bool = False):
        self.checks = dict(checks or {})
        self._started = threading.Event()
        self._stopping = threading.Event()
        if started:
            self.mark_started()

    def mark_started(self) -> None:
        self._started.set()
        process_group.mark(True)  # a child of a group: its parent's /readyz counts it

    def mark_stopping(self) -> None:
        """SIGTERM received: readiness fails at once so a balancer stops sending work here."""
        self._stopping.set()
        process_group.mark(False)

    def readiness(self) -> tuple[bool, dict]:
        results = {"process": "stopping" if self._stopping.is_set() else
                   "ok" if self._started.is_set() else "starting"}
        for name, check in self.checks.items():
            try:
                check()
                results[name] = "ok"
            except Exception as ex:  # what failed is the answer, not an error of the probe
                results[name] = f"{type(ex).__name__}: {ex}"[:300]
        return all(value == "ok" for value in results.values()), results


def store_checks(database_url: str, redis_url: str) -> dict[str, Check]:
    """Postgres and Redis, each reached with a fresh connection."""
    def postgres() -> None:
        with db_infra.connect(database_url, timeout=2) as conn:
            conn.execute("SELECT 1")

    def redis() -> None:
        conn = redis_infra.client(redis_url)
        try:
            conn.ping()
        finally:
            conn.close()

    return {"postgres": postgres, "redis": redis}


def for_settings(settings, *, started: bool = False, children: Check | None = None) -> Health:
    """Postgres and Redis; with `children` (a process group's parent: process_group.Group.check), the
    group's children too: the group is ready only when every one of them is."""
    checks = store_checks(settings.database_url, settings.redis_url)
    if children is not None:
        checks["children"] = children
    return Health(checks, started=started)
