"""envoi_store_errors_total: an operation failing for want of Postgres or Redis is counted (the alert
rules EnvoiPostgresErrors / EnvoiRedisErrors watch it)."""

from __future__ import annotations

import pytest
import redis

from envoi.infra import redis as redis_infra
from envoi.infra.db import Database, DatabaseUnavailable
from envoi.infra.metrics import Metrics
from tests.support.processes import free_port


def test_an_unreachable_postgres_is_counted():
    metrics = Metrics()
    db = Database(f"postgresql://postgres@127.0.0.1:{free_port()}/envoi", min_size=1, max_size=1, pool_timeout=0.5,
                  on_unavailable=metrics.store_errors.labels("postgres").inc)
    try:
        with pytest.raises(DatabaseUnavailable), db.transaction() as conn:
            conn.execute("SELECT 1")
    finally:
        db.close()
    assert metrics.store_errors.labels("postgres")._value.get() == 1


def test_an_unreachable_redis_is_counted_and_a_working_one_is_not(redis_url):
    metrics = Metrics()
    down = redis_infra.client(f"redis://127.0.0.1:{free_port()}/0",
                              on_unavailable=metrics.store_errors.labels("redis").inc)
    with pytest.raises(redis.ConnectionError):
        down.ping()
    up = redis_infra.client(redis_url, on_unavailable=metrics.store_errors.labels("redis").inc)
    assert up.ping()
    assert metrics.store_errors.labels("redis")._value.get() == 1
