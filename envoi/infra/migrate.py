"""Versioned SQL migrations: files NNNN_name.sql applied in order, each recorded once."""

from __future__ import annotations

from importlib import resources

import psycopg

from envoi.infra.db import connect

LOCK_ID = 0x656E766F69  # "envoi": serialises concurrent `envoi migrate` runs


def available() -> list[tuple[str, str]]:
    files = resources.files("envoi.infra") / "migrations"
    found = sorted(f.name for f in files.iterdir() if f.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), (files / name).read_text()) for name in found]


def ensure_database(dsn: str) -> None:
    """Create the database named in the DSN if it does not exist (dev and tests)."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    name = info.get("dbname")
    if not name:
        return
    admin = psycopg.conninfo.make_conninfo(dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def migrate(dsn: str) -> list[str]:
    """Apply every migration not yet recorded; return the names applied. Idempotent."""
    applied_now = []
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, sql in available():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                applied_now.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
    return applied_now
