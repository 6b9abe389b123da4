"""infra.db's batch helpers against a real Postgres: insert_columns (one array per column) and
Database.pipelined (a transaction in pipeline mode)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from envoi.infra.db import Database, insert_columns

COLUMNS = (("n", "bigint"), ("label", "text"), ("at", "timestamptz"), ("body", "bytea"), ("doc", "text"),
           ("tags", "jsonb"), ("small", "int"))
EXPRESSIONS = {"doc": "u.doc::jsonb", "tags": "ARRAY(SELECT jsonb_array_elements_text(u.tags))"}


@pytest.fixture
def table(db):
    db.execute("CREATE TABLE batch_test (id bigserial PRIMARY KEY, n bigint, label text, at timestamptz,"
               " body bytea, doc jsonb, tags text[] NOT NULL DEFAULT '{}', small int)")
    yield "batch_test"
    db.execute("DROP TABLE batch_test")


@pytest.fixture
def database(services):
    database = Database(services.settings.database_url, max_size=1)
    yield database
    database.close()


def test_insert_columns_stores_every_value_as_given(db, table):
    at = datetime(2026, 11, 23, 12, 0, 1, 500, tzinfo=UTC)
    rows = [
        (1, "quotes \" ' and \\ backslash, {braces}", at, b"\x00\x01\xff\r\n", json.dumps({"k": "v\"\\"}),
         json.dumps(["t1", "t,2", "t\"3"]), 5),
        (None, None, at, None, "{}", "[]", None),  # NULLs in every nullable column
        (2**40, "é ü 漢", at, b"", "[1, 2]", "[]", 2**31 - 1),
    ]
    cur = insert_columns(db, table, COLUMNS, rows, expressions=EXPRESSIONS, returning="id, label")
    returned = cur.fetchall()
    assert sorted(r["label"] or "" for r in returned) == sorted(r[1] or "" for r in rows)
    stored = db.execute(f"SELECT n, label, at, body, doc, tags, small FROM {table} ORDER BY id").fetchall()
    assert [tuple(r.values()) for r in stored] == [
        (1, rows[0][1], at, b"\x00\x01\xff\r\n", {"k": "v\"\\"}, ["t1", "t,2", "t\"3"], 5),
        (None, None, at, None, {}, [], None),
        (2**40, "é ü 漢", at, b"", [1, 2], [], 2**31 - 1),
    ]


def test_insert_columns_with_no_rows_inserts_nothing(db, table):
    insert_columns(db, table, COLUMNS, [], expressions=EXPRESSIONS)
    assert db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"] == 0


def test_pipelined_commits_everything_and_reads_results_midway(database, db, table):
    at = datetime.now(UTC)
    with database.pipelined() as conn:
        first = insert_columns(conn, table, COLUMNS, [(1, "a", at, b"x", "{}", "[]", 1)], expressions=EXPRESSIONS,
                               returning="id")
        first_id = first.fetchone()["id"]  # a read inside the pipeline: it syncs and goes on
        insert_columns(conn, table, COLUMNS, [(first_id, "b", at, b"y", "{}", "[]", 2)], expressions=EXPRESSIONS)
    rows = db.execute(f"SELECT id, n, label FROM {table} ORDER BY id").fetchall()
    assert [(r["n"], r["label"]) for r in rows] == [(1, "a"), (rows[0]["id"], "b")]


def test_pipelined_rolls_back_everything_when_a_statement_fails(database, db, table):
    at = datetime.now(UTC)
    with pytest.raises(Exception) as failure, database.pipelined() as conn:
        insert_columns(conn, table, COLUMNS, [(1, "kept?", at, b"x", "{}", "[]", 1)], expressions=EXPRESSIONS)
        insert_columns(conn, table, COLUMNS, [(2, "bad", at, b"x", "not json", "[]", 1)], expressions=EXPRESSIONS)
    assert "json" in str(failure.value).lower()
    assert db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"] == 0
