"""Two regions side by side for tests: each with its own Postgres database, Redis db number, secret key
and real processes (`envoi api`, `relay`, `smtp`, `worker`), plus the outside world they share (one dev
sink as every recipient's MX, one webhook receiver). And the scanners that read EVERYTHING a region
stores: every column of every table, every key and value of its Redis db.

Each region's ids start at its own high offset (`ID_BASE`), so an id of one region is recognisable
anywhere in the other's stores: the EU's are 73000xxxxx, the US's 86000xxxxx.

The fixture `two_regions` is registered in tests/conftest.py; tests/integration/regions/ uses it.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import pickle
import re
import secrets
import ssl
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import psycopg
import pytest
import redis
import trustme
from psycopg import sql

from envoi import runtime
from envoi.dev.sink import Sink
from envoi.infra.settings import Settings
from tests.conftest import PG_ADMIN, REDIS_BASE, _free_redis_db
from tests.support.databases import migrated_database
from tests.support.localstripe import LocalStripe
from tests.support.processes import Proc, envoi, free_port, http_ok, process_env
from tests.support.webhook_receiver import Receiver

#: Where each region's sequences start: every id of the region is ID_BASE + a small number.
ID_BASE = {"eu": 7_300_000_000, "us": 8_600_000_000}


def id_pattern(region: str) -> re.Pattern:
    """Any id of REGION's rows, as digits standing alone (ids stay below ID_BASE + 100000 in a test)."""
    return re.compile(rf"(?<!\d){ID_BASE[region] // 100_000}\d{{5}}(?!\d)")


@dataclass
class Region:
    name: str
    token: str  # in every name, address, subject and body this region's workload makes
    settings: Settings
    services: runtime.Services
    api_url: str = ""
    smtp_port: int = 0
    procs: list[Proc] = field(default_factory=list)

    @property
    def database_url(self) -> str:
        return self.settings.database_url

    @property
    def redis_url(self) -> str:
        return self.settings.redis_url

    def env(self) -> dict:
        """The environment of this region's processes and CLI: its stores named for its region only."""
        up = self.name.upper()
        other = "US" if up == "EU" else "EU"
        env = process_env(
            self.settings, **{f"ENVOI_DATABASE_URL_{up}": self.database_url, f"ENVOI_REDIS_URL_{up}": self.redis_url},
            ENVOI_PUBLIC_URL=self.api_url, ENVOI_BILLING="on", ENVOI_WEBHOOK_ALLOW="127.0.0.1/32",
            ENVOI_TRACKING_HOST_MODE="public_url",  # no tracking CNAMEs here: links reach the region's API
            ENVOI_STRIPE_SECRET_KEY=self.settings.stripe_secret_key, ENVOI_STRIPE_API_BASE=self.settings.stripe_api_base,
            ENVOI_STRIPE_WEBHOOK_SECRET=self.settings.stripe_webhook_secret,
            ENVOI_OTHER_REGION_URLS=",".join(f"{k}={v}" for k, v in self.settings.region_urls.items()))
        # Nothing of the other region may be within reach of this one's processes.
        for name in (f"ENVOI_DATABASE_URL_{other}", f"ENVOI_REDIS_URL_{other}"):
            env.pop(name, None)
        return env

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.output()}" for p in self.procs)


ROUTING_SECRET = "a-routing-secret-both-regions-share-0123456789"


def _make_database(region: str) -> str:
    dsn = migrated_database(f"envoi_test_{region}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Every sequence (bigserial and identity columns alike) continues from the region's offset.
        for (schema, name) in conn.execute("SELECT schemaname, sequencename FROM pg_sequences").fetchall():
            conn.execute("SELECT setval(%s, %s)", (f'"{schema}"."{name}"', ID_BASE[region]))
    return dsn


def _drop_database(dsn: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _certificate(tmp: Path) -> tuple[str, str, ssl.SSLContext]:
    """A certificate for both submission servers, and a client context trusting it."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_path, key_path = tmp / "smtp-cert.pem", tmp / "smtp-key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return str(cert_path), str(key_path), client


def _start(region: Region, sink: Sink, cert: str, key: str, tmp: Path, api_urls: dict[str, str]) -> None:
    region.api_url = api_urls[region.name]
    region.smtp_port = free_port()
    env = region.env()
    # Routing, never transfer: a login of the other region is looked up at the other region's real API.
    env["ENVOI_ROUTING_SECRET"] = ROUTING_SECRET
    env["ENVOI_ROUTING_PEER_URLS"] = ",".join(f"{k}={v}" for k, v in api_urls.items() if k != region.name)
    env["ENVOI_SMTP_ROUTE"] = f"127.0.0.1:{sink.smtp_port}"  # every recipient's MX is the sink
    env["ENVOI_HELO_NAME"] = f"relay.{region.name}.envoi.test"
    logs = tmp / region.name
    logs.mkdir()
    port = urlsplit(region.api_url).port
    region.procs += [
        Proc("api", envoi("api", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4"), env, logs),
        Proc("relay", envoi("relay", "--metrics-port", "0"), env, logs),
        Proc("smtp", envoi("smtp", "--port", str(region.smtp_port), "--smtps-port", "0", "--cert", cert,
                           "--key", key, "--var", str(logs)), env, logs),
        Proc("worker", envoi("worker", "--processes", "1"), env, logs),
        Proc("webhooks", envoi("webhooks", "dispatch", "--processes", "1"), env, logs),
    ]


def _wait_ready(region: Region) -> None:
    api, relay, smtp, worker, dispatcher = region.procs
    api.wait_ready(lambda: http_ok(f"{region.api_url}/healthz"), timeout=45)
    smtp.wait_ready(lambda: _smtp_greets(region.smtp_port), timeout=45)
    relay.wait_ready(lambda: "relay: region" in relay.output(), timeout=45)
    worker.wait_ready(lambda: "worker: region" in worker.output(), timeout=45)
    dispatcher.wait_ready(lambda: "webhooks dispatch: region" in dispatcher.output(), timeout=45)


def _smtp_greets(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        return s.recv(100).startswith(b"220")


@dataclass
class World:
    """Both regions and the outside world they share."""
    eu: Region
    us: Region
    sink: Sink
    receiver: Receiver
    smtp_client_tls: ssl.SSLContext
    stripe: LocalStripe

    def regions(self) -> tuple[Region, Region]:
        return self.eu, self.us


@pytest.fixture(scope="module")
def two_regions(localstripe):
    """The EU and US regions running at once, each on its own stores and processes; yields a World.
    Both bill through one Stripe account (localstripe), as one company running two regions would: Stripe
    is the outside world, and each region's webhook endpoint hears of every customer's events."""
    tmp = Path(tempfile.mkdtemp(prefix="envoi-regions-"))
    cert, key, client_tls = _certificate(tmp)
    urls = {"eu": "https://api.eu.envoi.test", "us": "https://api.us.envoi.test"}
    api_urls = {name: f"http://127.0.0.1:{free_port()}" for name in urls}  # known before either starts
    made: list[Region] = []
    with Sink() as sink, Receiver() as receiver:
        try:
            for name in ("eu", "us"):
                dsn, number = _make_database(name), _free_redis_db()
                settings = Settings(region=name, database_url=dsn, redis_url=f"{REDIS_BASE}/{number}",
                                    secret_key=secrets.token_bytes(32), lookup_key=secrets.token_bytes(32),
                                    region_urls=urls, billing=True,
                                    webhook_allow=("127.0.0.1/32",), stripe_secret_key=localstripe.secret_key,
                                    stripe_api_base=localstripe.api_base,
                                    stripe_webhook_secret=localstripe.webhook_secret)
                region = Region(name, f"{name}mark{secrets.token_hex(3)}", settings,
                                runtime.build(settings, pool_size=3))
                made.append(region)
                if name == "eu":
                    region.services.billing.sync_plans()  # one Stripe catalogue for both regions
                _start(region, sink, cert, key, tmp, api_urls)
            for region in made:
                try:
                    _wait_ready(region)
                except RuntimeError as ex:
                    raise RuntimeError(f"{ex}\n{region.logs()}") from None
            yield World(made[0], made[1], sink, receiver, client_tls, localstripe)
        finally:
            # All at once: each may take seconds to finish its work in hand.
            procs = [proc for region in made for proc in reversed(region.procs)]
            for proc in procs:
                if proc.popen.poll() is None:
                    proc.popen.terminate()
            for proc in procs:
                proc.stop()
            for region in made:
                region.services.close()
                _drop_database(region.database_url)
                redis.Redis.from_url(region.redis_url).flushdb()


# -- driving a region -------------------------------------------------------------------------------------

def request(method: str, url: str, *, key: str | None = None, form: dict | list | None = None,
            raw: bytes | None = None, headers: dict | None = None, cookie: str | None = None,
            ) -> tuple[int, dict, bytes]:
    """One HTTP request, redirects NOT followed; returns (status, headers lower-cased, body)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    head = dict(headers or {})
    body = raw
    if form is not None:
        body = urlencode(form, doseq=True).encode()
        head["Content-Type"] = "application/x-www-form-urlencoded"
    if key:
        head["Authorization"] = "Basic " + base64.b64encode(f"api:{key}".encode()).decode()
    if cookie:
        head["Cookie"] = cookie
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=head)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# -- scanning a region's stores ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Hit:
    where: str  # "table.column" or "redis key"
    needle: str
    excerpt: str


def _excerpt(text: str, at: int) -> str:
    return text[max(0, at - 60): at + 60].replace("\n", " ")


def find(text: str, where: str, needles: list[str], ids: re.Pattern | None) -> list[Hit]:
    hits = []
    lowered = text.lower()
    for needle in needles:
        if (at := lowered.find(needle.lower())) >= 0:
            hits.append(Hit(where, needle, _excerpt(text, at)))
    if ids is not None and (m := ids.search(text)):
        hits.append(Hit(where, f"id {m.group(0)}", _excerpt(text, m.start())))
    return hits


def postgres_columns(dsn: str) -> dict[str, list[tuple[str, str]]]:
    """Every table of the database (partitions too) and its columns with their types."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.table_schema, c.table_name, c.column_name, c.data_type FROM information_schema.columns c"
            " JOIN information_schema.tables t USING (table_schema, table_name)"
            " WHERE t.table_type = 'BASE TABLE' AND c.table_schema NOT IN ('pg_catalog', 'information_schema')"
            " ORDER BY c.table_schema, c.table_name, c.ordinal_position").fetchall()
    tables: dict[str, list[tuple[str, str]]] = {}
    for schema, table, column, kind in rows:
        tables.setdefault(f"{schema}.{table}", []).append((column, kind))
    return tables


def scan_postgres(dsn: str, needles: list[str], ids: re.Pattern | None) -> tuple[list[Hit], int]:
    """Every value of every column of every table, cast to text (bytea read as text too: a sealed body
    is ciphertext, but a plaintext id or address in a bytea column would show); returns (hits, tables)."""
    tables = postgres_columns(dsn)
    hits: list[Hit] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for qualified, columns in tables.items():
            schema, table = qualified.split(".", 1)
            exprs = [sql.SQL("encode({}, 'escape')").format(sql.Identifier(c)) if kind == "bytea"
                     else sql.SQL("{}::text").format(sql.Identifier(c)) for c, kind in columns]
            query = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(exprs), sql.Identifier(schema, table))
            for row in conn.execute(query):
                for (column, _), value in zip(columns, row, strict=True):
                    if value is not None:
                        hits += find(value, f"{table}.{column}", needles, ids)
    return hits, len(tables)


def scan_postgres_bytes(dsn: str, hex_needles: list[str]) -> list[Hit]:
    """Every bytea value of every table, in hex, for byte strings given in hex (keyed hashes). Apart from
    scan_postgres: ids are not looked for in hex, where random ciphertext would match them by chance."""
    hits: list[Hit] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for qualified, columns in postgres_columns(dsn).items():
            schema, table = qualified.split(".", 1)
            binary = [c for c, kind in columns if kind == "bytea"]
            if not binary:
                continue
            exprs = [sql.SQL("encode({}, 'hex')").format(sql.Identifier(c)) for c in binary]
            query = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(exprs), sql.Identifier(schema, table))
            for row in conn.execute(query):
                for column, value in zip(binary, row, strict=True):
                    if value is not None:
                        hits += find(value, f"{table}.{column}", hex_needles, None)
    return hits


def _texts(raw: bytes) -> list[str]:
    """What a Redis value says, as text: itself, and when it is an RQ job's zlib'd pickle, the
    unpickled repr (a job's arguments would otherwise hide an id in binary)."""
    out = [raw.decode("utf-8", "replace")]
    try:
        inflated = zlib.decompress(raw)
    except zlib.error:
        inflated = raw if raw[:1] == b"\x80" else None  # a pickle stored without compression
    if inflated is not None:
        out.append(inflated.decode("utf-8", "replace"))
        with contextlib.suppress(Exception):  # not a pickle after all: the text above is what it says
            out.append(repr(pickle.loads(inflated)))  # our own test Redis, just written by us
    return out


def redis_entries(url: str) -> list[tuple[str, list[bytes]]]:
    """Every key of the db with every part of its value, whatever its type."""
    conn = redis.Redis.from_url(url)
    entries = []
    for key in conn.scan_iter(count=1000):
        kind = conn.type(key).decode()
        if kind == "string":
            parts = [conn.get(key) or b""]
        elif kind == "hash":
            parts = [p for pair in conn.hgetall(key).items() for p in pair]
        elif kind == "list":
            parts = conn.lrange(key, 0, -1)
        elif kind == "set":
            parts = list(conn.smembers(key))
        elif kind == "zset":
            parts = [p for member, score in conn.zrange(key, 0, -1, withscores=True)
                     for p in (member, str(score).encode())]
        elif kind == "stream":
            parts = [p for entry_id, fields in conn.xrange(key) for p in
                     (entry_id, *(x for pair in fields.items() for x in pair))]
        elif kind == "none":  # expired between SCAN and TYPE
            continue
        else:
            raise AssertionError(f"Redis key {key!r} has a type the scan does not read: {kind}")
        entries.append((key.decode("utf-8", "replace"), parts))
    return entries


def scan_redis(url: str, needles: list[str], ids: re.Pattern | None) -> tuple[list[Hit], int]:
    """Every key and every value of the Redis db; returns (hits, keys scanned)."""
    hits: list[Hit] = []
    entries = redis_entries(url)
    for key, parts in entries:
        hits += find(key, f"redis key {key}", needles, ids)
        for part in parts:
            for text in _texts(part):
                hits += find(text, f"redis value of {key}", needles, ids)
    return hits, len(entries)


def dumps(hits: list[Hit], limit: int = 25) -> str:
    return json.dumps([h.__dict__ for h in hits[:limit]], indent=1) + (f"\n... {len(hits)} in all" if hits else "")
