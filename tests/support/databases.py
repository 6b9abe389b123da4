"""Migrated Postgres databases for tests, cloned from one template per test run.

Running every migration for each database a test makes (the session's, each region's, each restore target)
cost about a second or more each on a loaded machine; the first call migrates a template database once
(with envoi.infra.migrate, as `envoi migrate` would, with no key and no region stamp) and every database is
then `CREATE DATABASE … TEMPLATE` of it: the same schema and schema_migrations rows, made by Postgres
copying files. The template is dropped when the run ends.
"""

from __future__ import annotations

import atexit
import os
import time
import uuid

import psycopg
from psycopg import errors, sql

from envoi.infra.migrate import ensure_database, migrate

PG_ADMIN = os.environ.get("ENVOI_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
_template: str | None = None


def _template_name() -> str:
    global _template
    if _template is None:
        name = f"envoi_template_{uuid.uuid4().hex[:10]}"
        dsn = psycopg.conninfo.make_conninfo(PG_ADMIN, dbname=name)
        ensure_database(dsn)
        atexit.register(_drop, name)
        migrate(dsn)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            # Nobody connects to it again (a session on the template makes CREATE DATABASE refuse).
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        _template = name
    return _template


def migrated_database(prefix: str = "envoi_test") -> str:
    """A new database named PREFIX_<random> with every migration applied; its DSN. Drop it with drop_database."""
    template = _template_name()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    create = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        for attempt in range(50):
            try:
                conn.execute(create)
                break
            except errors.ObjectInUse:  # an autovacuum worker on the template for a moment: try again
                if attempt == 49:
                    raise
                time.sleep(0.1)
    return psycopg.conninfo.make_conninfo(PG_ADMIN, dbname=name)


def drop_database(dsn: str) -> None:
    _drop(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])


def _drop(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
