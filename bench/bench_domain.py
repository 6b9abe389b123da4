"""The bench scripts' common set-up: a new account with one verified sending domain."""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from collections.abc import Callable, Iterator


def verified_domain(accounts, domain: str, account: str = "bench", *, dkim_key_size: int = 1024) -> tuple[dict, dict]:
    """(account row, domain row): a new account named `account` and `domain` added to it as verified (the
    operator's `--verified`: sendable at once, no DNS), the row read back as the send path reads it
    (AccountService.sending_domain, which also warms its cache). 1024-bit DKIM keys by default: key
    generation is set-up here, and the benches that measure signing pass their own size."""
    row = accounts.create_account(account)
    accounts.add_domain(row["id"], domain, dkim_key_size=dkim_key_size, verified=True)
    return row, accounts.sending_domain(domain, row["id"])


@contextlib.contextmanager
def scratch_services(admin: str, redis: str, *, after_migrate: Callable[[str], None] | None = None) -> Iterator:
    """A new database migrated by this tree and runtime.build() on it, as `envoi api` builds them: yields
    (the database's name, Settings, Services). On the way out: the services closed, the live streams of the
    database's accounts deleted from `redis`, the database dropped. `after_migrate(dsn)` runs before the
    build (a storage setting, say)."""
    import psycopg

    from envoi import runtime
    from envoi.infra.migrate import ensure_database, migrate
    from envoi.infra.settings import Settings

    name = f"envoi_bench_{uuid.uuid4().hex[:10]}"
    dsn = psycopg.conninfo.make_conninfo(admin, dbname=name)
    ensure_database(dsn)
    svc = None
    try:
        migrate(dsn)
        if after_migrate is not None:
            after_migrate(dsn)
        settings = Settings(region="eu", database_url=dsn, redis_url=redis, secret_key=secrets.token_bytes(32),
                            lookup_key=secrets.token_bytes(32), public_url="http://127.0.0.1:8025")
        svc = runtime.build(settings)
        yield name, settings, svc
    finally:
        if svc is not None:
            with contextlib.suppress(Exception):
                with svc.db.transaction() as conn:
                    ids = [r["id"] for r in conn.execute("SELECT id FROM accounts")]
                if ids:
                    svc.redis.delete(*[svc.stream.key(i) for i in ids])  # the run's live streams
            with contextlib.suppress(Exception):
                svc.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def process_cpu(pid: int) -> float:
    """Seconds of CPU (user + system) process `pid` has used, its threads included."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backends_cpu(admin_conn, database: str) -> float:
    """Seconds of CPU the Postgres backends now connected to `database` have used (`admin_conn` an
    autocommit psycopg connection to another database)."""
    pids = [r[0] for r in admin_conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,))]
    return sum(process_cpu(p) for p in pids if os.path.exists(f"/proc/{p}"))


def wal_position(admin_conn) -> int:
    """The cluster's WAL insert position in bytes (other work on the cluster included)."""
    return admin_conn.execute("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint").fetchone()[0]
