"""Redis behind Sentinel: the redis+sentinel:// URL, and ENVOI_REDIS_SENTINELS building it."""

from __future__ import annotations

import base64

import pytest

from envoi.infra import redis as redis_infra
from envoi.infra.region_stamp import where
from envoi.infra.settings import Settings, SettingsError

KEY = base64.b64encode(b"k" * 32).decode()
BASE = {"ENVOI_SECRET_KEY": KEY, "ENVOI_LOOKUP_KEY": KEY}


def test_sentinels_and_service_become_a_sentinel_url_keeping_the_db_and_password():
    settings = Settings.from_env({**BASE, "REDIS_URL": "redis://:s3cret@ignored:6379/4",
                                  "ENVOI_REDIS_SENTINELS": "10.0.0.1:26379, 10.0.0.2,[fd00::3]:26380",
                                  "ENVOI_REDIS_SENTINEL_SERVICE": "envoi-eu"})
    assert settings.redis_url == "redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26379,[fd00::3]:26380/envoi-eu/4"
    target = redis_infra.SentinelUrl.parse(settings.redis_url)
    assert target.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("fd00::3", 26380)]
    assert (target.service, target.db, target.password) == ("envoi-eu", 4, "s3cret")


def test_the_region_s_own_sentinels_win():
    settings = Settings.from_env({**BASE, "ENVOI_REGION": "us", "ENVOI_REDIS_SENTINELS": "a:1",
                                  "ENVOI_REDIS_SENTINELS_US": "b:2", "ENVOI_REDIS_SENTINEL_SERVICE": "m"})
    assert settings.redis_url == "redis+sentinel://b:2/m/0"


def test_sentinels_without_a_service_are_refused():
    with pytest.raises(SettingsError, match="ENVOI_REDIS_SENTINEL_SERVICE"):
        Settings.from_env({**BASE, "ENVOI_REDIS_SENTINELS": "a:1"})


def test_a_sentinel_url_builds_a_client_that_asks_the_sentinels():
    client = redis_infra.client("redis+sentinel://127.0.0.1:1,127.0.0.1:2/envoi/3?sentinel_password=pw")
    pool = client.connection_pool
    assert pool.service_name == "envoi" and pool.connection_kwargs["db"] == 3
    assert [c.connection_pool.connection_kwargs["port"] for c in pool.sentinel_manager.sentinels] == [1, 2]
    assert pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs["password"] == "pw"
    # Without a primary to find it fails like any unreachable Redis (callers already handle RedisError).
    with pytest.raises(redis_infra.RedisError):
        client.ping()


@pytest.mark.parametrize("url", ["redis+sentinel://a:1", "redis+sentinel:///m", "redis+sentinel://a:1/m/x"])
def test_malformed_sentinel_urls_are_refused(url):
    with pytest.raises(ValueError):
        redis_infra.SentinelUrl.parse(url)


def test_errors_name_the_sentinels_without_the_password():
    assert where("redis+sentinel://:pw@a:1,b:2/m/0") == "a:1,b:2/m/0"
    assert where("postgresql://u:pw@db:5432/envoi") == "db:5432/envoi"
