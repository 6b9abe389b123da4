"""Two regions side by side, each with its own Postgres database and Redis db number, and both regions'
APIs on real loopback HTTP servers, for the routing tests (routing, never transfer).

Registered as a plugin in tests/conftest.py.
"""

from __future__ import annotations

import os
import secrets
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import psycopg
import pytest
import redis

from envoi import runtime
from envoi.api.app import create_app
from envoi.infra.settings import Settings
from tests.support.databases import migrated_database
from tests.support.servers import serve_in_background, shutdown

PG_ADMIN = os.environ.get("ENVOI_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("ENVOI_TEST_REDIS", "redis://127.0.0.1:6379")
CLAIM = "envoi:test:claim"
ROUTING_SECRET = b"routing-secret-shared-by-both-regions-0123456789"


def fresh_database(prefix: str = "envoi_region") -> str:
    """A new migrated database; drop it with drop_database."""
    return migrated_database(prefix)


def drop_database(dsn: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_redis_url() -> str:
    """An empty Redis db number, claimed (as tests/conftest.py claims the session's); flush it after."""
    for number in range(15, 0, -1):
        conn = redis.Redis.from_url(f"{REDIS_BASE}/{number}")
        if conn.dbsize() == 0 and conn.set(CLAIM, "1", nx=True, ex=3600):
            return f"{REDIS_BASE}/{number}"
    raise RuntimeError("no empty Redis database for the tests")


class _Threading(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


class LiveApi:
    """An app on a real loopback HTTP server (the peer lookups are real HTTP requests)."""

    def __init__(self):
        self.server = make_server("127.0.0.1", 0, lambda env, start: self.app(env, start),
                                  server_class=_Threading, handler_class=_Quiet)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.app = None
        serve_in_background(self.server)

    def close(self) -> None:
        shutdown(self.server)
        self.server.server_close()


@pytest.fixture(scope="module")
def routed_regions():
    """(eu, us): each region's Services on its own fresh database and Redis db, with routing on between
    them over real HTTP; each one's settings carry its peer's URL and both regions' SMTP hosts. Fresh
    stores: nothing another test left pending (a stats fold, a doorbell) changes them behind a test's back."""
    http = {region: LiveApi() for region in ("eu", "us")}
    stores = {region: (fresh_database(), free_redis_url()) for region in http}
    urls = {region: server.url for region, server in http.items()}
    built = {}
    for region, (dsn, redis_url) in stores.items():
        built[region] = runtime.build(Settings(
            region=region, database_url=dsn, redis_url=redis_url, secret_key=secrets.token_bytes(32), lookup_key=secrets.token_bytes(32),
            public_url=urls[region], region_urls=urls, routing_secret=ROUTING_SECRET, routing_timeout=2.0,
            region_smtp_hosts={"eu": "smtp.eu.envoi.test:587", "us": "smtp.us.envoi.test:587"},
            routing_peer_urls={r: u for r, u in urls.items() if r != region}, retry_schedule=(1, 2, 4)),
            pool_size=4)
        http[region].app = create_app(built[region].settings, built[region])
    yield built["eu"], built["us"]
    for server in http.values():
        server.close()
    for services in built.values():
        services.close()
    for dsn, redis_url in stores.values():
        redis.Redis.from_url(redis_url).flushdb()
        drop_database(dsn)


def footprint(services) -> tuple[dict, set]:
    """Row counts of every table and every Redis key of a region: what a request may not change."""
    with psycopg.connect(services.settings.database_url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p') AND n.nspname = 'public' AND NOT c.relispartition")]
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    return counts, set(services.redis.scan_iter("*"))
