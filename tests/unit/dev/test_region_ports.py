"""`envoi up`'s per-region defaults: two regions side by side never share a port, a database or a Redis db."""

from __future__ import annotations

import dataclasses
import os

from click.testing import CliRunner

from envoi.cli import main
from envoi.dev import stack, up


def test_every_port_of_both_regions_is_distinct_and_eu_keeps_the_historical_ones():
    ports = [port for region in up.REGION_PORTS.values() for port in dataclasses.astuple(region)]
    assert len(ports) == len(set(ports))
    eu = up.REGION_PORTS["eu"]
    assert (eu.api, eu.smtp, eu.smtps, eu.sink_smtp, eu.sink_http, eu.inbound, eu.relay_metrics, eu.postgres,
            eu.redis) == (8025, 2587, 2465, 2525, 8026, 2526, 9125, 55432, 56379)


def test_a_shared_server_gives_each_region_its_own_database_and_redis_db():
    assert stack.region_database_url("postgresql://postgres@db:5432/envoi", "eu") == "postgresql://postgres@db:5432/envoi"
    assert stack.region_database_url("postgresql://postgres@db:5432/envoi", "us") == "postgresql://postgres@db:5432/envoi_us"
    assert "dbname=envoi_us" in stack.region_database_url("host=db dbname=envoi", "us")
    assert stack.region_redis_url("redis://cache:6379/0", "eu") == "redis://cache:6379/0"
    assert stack.region_redis_url("redis://cache:6379/0", "us") == "redis://cache:6379/1"
    assert stack.region_redis_url("redis://cache:6379", "us") == "redis://cache:6379/1"


def test_regions_side_by_side_take_no_port_options_and_only_known_regions():
    runner = CliRunner()
    for argv in (["up", "--regions", "eu,us", "--api-port", "9000"], ["up", "--regions", "eu,mars"],
                 ["up", "--regions", "eu,eu"], ["up", "--regions", "eu,us", "--region", "us"]):
        result = runner.invoke(main, argv)
        assert result.exit_code == 2 and "--regions takes distinct regions" in result.output


def test_a_stack_file_counts_only_while_its_envoi_up_runs(tmp_path):
    (tmp_path / "us").mkdir()
    (tmp_path / "us" / up.STACK_ENV).write_text("ENVOI_UP_PID=999999999\nENVOI_REGION=us\n")
    assert up.running_stack_env(tmp_path, "us") == {}
    (tmp_path / "us" / up.STACK_ENV).write_text(f"ENVOI_UP_PID={os.getpid()}\nENVOI_REGION=us\n")
    assert up.running_stack_env(tmp_path, "us")["ENVOI_REGION"] == "us"
    assert up.running_stack_env(tmp_path, "eu") == {}
