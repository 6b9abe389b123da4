"""Shared fixtures: a private Postgres database and Redis db number per test run, real services."""

from __future__ import annotations

import base64
import os
import secrets
import uuid

import psycopg
import pytest
import redis

from envoi import runtime
from envoi.infra.settings import Settings
from tests.support.databases import drop_database, migrated_database
from tests.support.passwords import use_test_cost

# Fixtures shared by several test modules live in tests/support and are registered here, so that no test
# module imports another.
pytest_plugins = [
    "tests.support.api", "tests.support.browser", "tests.support.cli", "tests.support.dashboard",
    "tests.support.delivery", "tests.support.ips", "tests.support.localstripe", "tests.support.region_routing", "tests.support.regions",
    "tests.support.submission",
]

# argon2 at its lowest cost in this process (why, and what still runs at the full cost: tests/support/passwords.py)
use_test_cost()

PG_ADMIN = os.environ.get("ENVOI_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("ENVOI_TEST_REDIS", "redis://127.0.0.1:6379")
CLAIM = "envoi:test:claim"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    # Keep each phase's report on the item (item.rep_setup, rep_call, rep_teardown): fixtures such as
    # tests/support/browser.py's `page` look at it in their teardown to act on a failed test.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _free_redis_db() -> int:
    # Like rq's find_empty_redis_database(): use a db nobody else is using, flush it after.
    for number in range(15, 0, -1):
        conn = redis.Redis.from_url(f"{REDIS_BASE}/{number}")
        if conn.dbsize() == 0 and conn.set(CLAIM, "1", nx=True, ex=3600):
            return number
    raise RuntimeError("no empty Redis database for the tests")


@pytest.fixture(scope="session")
def database_url():
    dsn = migrated_database("envoi_test")
    yield dsn
    drop_database(dsn)


def flush_redis(url: str) -> None:
    """FLUSHDB this run's Redis db but keep the claim (in the same MULTI), so a parallel run can't take it."""
    redis.Redis.from_url(url).pipeline(transaction=True).flushdb().set(CLAIM, "1", ex=3600).execute()


@pytest.fixture(scope="session")
def redis_url():
    number = _free_redis_db()
    url = f"{REDIS_BASE}/{number}"
    yield url
    redis.Redis.from_url(url).flushdb()


@pytest.fixture(scope="session")
def settings(database_url, redis_url) -> Settings:
    return Settings(
        region="eu",
        database_url=database_url,
        redis_url=redis_url,
        secret_key=secrets.token_bytes(32),
        lookup_key=secrets.token_bytes(32),
        public_url="http://127.0.0.1:8025",
        region_urls={"us": "https://api.us.envoi.test", "eu": "https://api.eu.envoi.test"},
        retry_schedule=(1, 2, 4),
        spf_include="spf.eu.envoi.test",  # what domains' SPF records include (ENVOI_SPF_INCLUDE)
    )


@pytest.fixture(scope="session")
def services(settings):
    svc = runtime.build(settings)
    yield svc
    svc.close()


@pytest.fixture
def account(services):
    return services.accounts.create_account(f"acct-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def domain(services, account):
    return services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.example.test",
                                        dkim_key_size=1024, verified=True)


@pytest.fixture
def api_key(services, account, domain):
    _, secret = services.accounts.create_key(account["id"], "admin")
    return secret


def basic(secret: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"api:{secret}".encode()).decode()}


@pytest.fixture
def db(services):
    """A plain autocommit connection for assertions on what was (or was not) stored."""
    with psycopg.connect(services.settings.database_url, autocommit=True,
                         row_factory=psycopg.rows.dict_row) as conn:
        yield conn
