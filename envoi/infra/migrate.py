"""Versioned migrations: files NNNN_name.sql applied in order, each recorded once.

A migration that must change data with the region key (seal what was stored in the clear) is a
NNNN_name.py defining `apply(conn, sealer)` (or `apply(conn, sealer, lookup_key)` when it also needs
ENVOI_LOOKUP_KEY); `sealer` / `lookup_key` is None when the caller has no key, and the migration must
then refuse if it has anything to seal (a fresh database never has).
"""

from __future__ import annotations

import inspect
from importlib import resources

import psycopg

from envoi.infra import region_stamp
from envoi.infra.crypto import Sealer
from envoi.infra.db import connect

LOCK_ID = 0x656E766F69  # "envoi": serialises concurrent `envoi migrate` runs


def available() -> list[tuple[str, str, str]]:
    """(version, source, "sql" or "py") in order."""
    files = resources.files("envoi.infra") / "migrations"
    found = sorted(f.name for f in files.iterdir() if f.name.endswith((".sql", ".py")))
    return [(name.rpartition(".")[0], (files / name).read_text(), name.rpartition(".")[2]) for name in found]


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


def migrate(dsn: str, secret_key: bytes | None = None, region: str | None = None, *, key_id: str = "",
            previous_keys: tuple[tuple[str, bytes], ...] = (), lookup_key: bytes | None = None) -> list[str]:
    """Apply every migration not yet recorded; return the names applied. Idempotent.

    secret_key (ENVOI_SECRET_KEY) and lookup_key (ENVOI_LOOKUP_KEY) are needed only by migrations that
    seal existing data; key_id and previous_keys as in Settings, so what they seal names the region's
    current key. With `region`, the database is stamped with it (or refused: RegionMismatch) before
    anything is applied."""
    applied_now = []
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            if region is not None and _has_stamp_table(conn):
                region_stamp.claim_database(conn, region, region_stamp.where(dsn))
            done = {r["version"] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, sql, kind in available():
                if version in done:
                    continue
                with conn.transaction():
                    if kind == "py":
                        sealer = Sealer(secret_key, key_id=key_id, previous=previous_keys) if secret_key else None
                        _apply_python(conn, version, sql, sealer, lookup_key)
                    else:
                        conn.execute(sql)
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                applied_now.append(version)
            if region is not None:
                region_stamp.claim_database(conn, region, region_stamp.where(dsn))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
    return applied_now


def _has_stamp_table(conn) -> bool:
    return conn.execute("SELECT to_regclass('region_stamp') IS NOT NULL AS present").fetchone()["present"]


def _apply_python(conn, version: str, source: str, sealer: Sealer | None, lookup_key: bytes | None) -> None:
    namespace: dict = {"__name__": f"envoi.infra.migrations.m{version}"}
    exec(compile(source, f"{version}.py", "exec"), namespace)  # our own package file, like the .sql ones
    apply = namespace["apply"]
    if "lookup_key" in inspect.signature(apply).parameters:
        apply(conn, sealer, lookup_key or None)
    else:
        apply(conn, sealer)
