"""devstack against real binaries: private Postgres/Redis on free ports, Supervisor with real children."""

import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
import redis

from envoi.dev import stack as devstack
from envoi.dev.stack import Supervisor

SYSTEM_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
SLEEPER = [sys.executable, "-c", "import time; print('up'); time.sleep(60)"]


@pytest.fixture(scope="module")
def var_dir():
    # Shared by the Postgres tests so initdb runs once. Readable by others: as root, postgres runs as the
    # `postgres` user, which must reach var/pg (mkdtemp makes 0700 dirs).
    path = Path(tempfile.mkdtemp(prefix="envoi-devstack-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sup():
    supervisor = Supervisor(grace=5)
    yield supervisor
    supervisor.stop()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_private_postgres_starts_and_reuses_its_cluster(var_dir, sup):
    service = devstack.start_postgres(var_dir, port=devstack.free_port())
    sup.adopt("postgres", service.process)
    assert service.url.endswith("/envoi")
    with psycopg.connect(service.url, autocommit=True) as conn:
        assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
        conn.execute("CREATE TABLE kept (n int)")
    sup.stop()
    assert gone(service.process.pid)

    again = devstack.start_postgres(var_dir, port=devstack.free_port())
    sup.adopt("postgres", again.process)
    with psycopg.connect(again.url) as conn:  # same cluster: the table survived
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (0,)


def test_private_redis(tmp_path, sup):
    service = devstack.start_redis(tmp_path, port=devstack.free_port())
    sup.adopt("redis", service.process)
    client = redis.Redis.from_url(service.url)
    client.set("k", "v")
    assert client.get("k") == b"v"
    client.close()


def test_postgres_service_uses_reachable_database_url(var_dir):
    if not devstack.reachable_postgres(SYSTEM_POSTGRES):
        pytest.skip("no system Postgres on 127.0.0.1:5432")
    service = devstack.postgres_service(var_dir, {"DATABASE_URL": SYSTEM_POSTGRES})
    assert service == devstack.Service("postgres", SYSTEM_POSTGRES, None)


def test_postgres_service_falls_back_to_private(var_dir, sup, caplog):
    dead = f"postgresql://postgres:secret@127.0.0.1:{devstack.free_port()}/envoi"
    with caplog.at_level(logging.WARNING, logger="envoi.dev.stack"):
        service = devstack.postgres_service(var_dir, {"DATABASE_URL": dead}, port=devstack.free_port())
    sup.adopt("postgres", service.process)
    assert service.process is not None and service.url != dead
    assert devstack.reachable_postgres(service.url)
    assert "unreachable" in caplog.text and "secret" not in caplog.text


def test_supervisor_stop_stops_all_children(sup):
    first = sup.start("one", SLEEPER, ready=lambda: True)
    second = sup.start("two", SLEEPER, env={"X": "1"})
    sup.stop()
    assert first.returncode is not None and second.returncode is not None
    assert gone(first.pid) and gone(second.pid)


def test_supervisor_wait_returns_when_a_child_dies(sup):
    survivor = sup.start("sleeper", SLEEPER)
    sup.start("quitter", [sys.executable, "-c", "import time; time.sleep(0.3); raise SystemExit(3)"])
    started = time.monotonic()
    assert sup.wait() == 3
    assert time.monotonic() - started < 5
    assert gone(survivor.pid)


def test_supervisor_start_reports_last_output_when_not_ready(sup):
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 2.*boom"):
        sup.start("broken", [sys.executable, "-c", "print('boom'); raise SystemExit(2)"], ready=lambda: False)
    with pytest.raises(RuntimeError, match=r"(?s)not ready after 0.5s.*up"):
        sup.start("slow", SLEEPER, ready=lambda: False, timeout=0.5)
