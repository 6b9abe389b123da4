"""Each region's stores carry its name; a process of the other region refuses to start against them."""

from __future__ import annotations

import subprocess

import psycopg
import pytest
import redis
from click.testing import CliRunner

from envoi import runtime
from envoi.cli import main
from envoi.infra import region_stamp
from tests.support import region_routing as regions
from tests.support.processes import ROOT, envoi, free_port, process_env


@pytest.fixture
def fresh_database():
    dsn = regions.fresh_database("envoi_stamp")
    yield dsn
    regions.drop_database(dsn)


def stamps(dsn: str, redis_url: str) -> tuple[list, bytes | None]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT region FROM region_stamp").fetchall()
    return rows, redis.Redis.from_url(redis_url).get(region_stamp.REDIS_KEY)


def test_first_use_stamps_both_stores_and_the_other_region_is_refused(settings, fresh_database, redis_url):
    redis.Redis.from_url(redis_url).delete(region_stamp.REDIS_KEY)
    eu = settings.replace(database_url=fresh_database)
    runtime.build(eu, pool_size=1).close()
    assert stamps(fresh_database, redis_url) == ([("eu",)], b"eu")

    with pytest.raises(region_stamp.RegionMismatch, match="belongs to the EU region.*serves the US region"):
        runtime.build(eu.replace(region="us"), pool_size=1)
    runtime.build(eu, pool_size=1).close()  # its own region still starts
    assert stamps(fresh_database, redis_url) == ([("eu",)], b"eu")


def test_a_redis_of_the_other_region_is_refused_even_with_the_right_database(settings, fresh_database, redis_url):
    client = redis.Redis.from_url(redis_url)
    client.set(region_stamp.REDIS_KEY, "us")
    try:
        with pytest.raises(region_stamp.RegionMismatch, match="Redis .* belongs to the US region"):
            runtime.build(settings.replace(database_url=fresh_database), pool_size=1)
        # The database was stamped (it was unstamped and is this region's), Redis kept its own stamp.
        assert stamps(fresh_database, redis_url) == ([("eu",)], b"us")
    finally:
        client.set(region_stamp.REDIS_KEY, "eu")


def test_the_cli_and_migrate_refuse_a_database_of_the_other_region(settings, cli_env, fresh_database):
    cli_env.setenv("ENVOI_DATABASE_URL_EU", fresh_database)
    runner = CliRunner()
    assert runner.invoke(main, ["migrate"]).exit_code == 0  # stamps it EU
    cli_env.setenv("ENVOI_REGION", "us")
    cli_env.setenv("ENVOI_DATABASE_URL_US", fresh_database)
    cli_env.setenv("ENVOI_REDIS_URL_US", settings.redis_url)
    for argv in (["migrate"], ["accounts", "list"]):
        result = runner.invoke(main, argv)
        assert result.exit_code == 1, result.output
        assert "belongs to the EU region" in result.output and "Traceback" not in result.output


def test_the_api_process_refuses_the_other_regions_stores_in_one_line(settings, fresh_database, redis_url):
    runtime.build(settings.replace(database_url=fresh_database), pool_size=1).close()  # stamped EU
    env = process_env(settings.replace(region="us", database_url=fresh_database))
    done = subprocess.run(envoi("api", "--bind", f"127.0.0.1:{free_port()}"), env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("Error: the Postgres database at")
    assert "belongs to the EU region" in done.stderr and "Traceback" not in done.stderr
