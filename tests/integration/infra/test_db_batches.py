"""infra.db's batch helpers against a real Postgres: insert_columns (one array per column) and
Database.pipelined (a transaction in pipeline mode)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from envoi.infra import db as db_module
from envoi.infra.db import Database, DataError, Unavailable, insert_columns, is_data_error
from tests.support.relay import wait_until

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


@pytest.mark.parametrize("count", [1, 2, 7, 8, db_module.SMALL_INSERT])
def test_a_few_rows_in_a_pipeline_are_stored_as_given(database, db, table, count):
    # Up to SMALL_INSERT rows go as one multi-row VALUES: %b placeholders up to 50 parameters (7 columns: 7
    # rows), $n ones past that (8 and 32 rows). Every kind of value, NULLs included, lands as given.
    at = datetime(2026, 11, 23, 12, 0, 1, 500, tzinfo=UTC)
    kinds = [(1, "quotes \" ' and \\ backslash, $1 %s %b {braces}", at, b"\x00\x01\xff\r\n",
              json.dumps({"k": "v\"\\"}), json.dumps(["t1", "t,2", "t\"3"]), 5),
             (None, None, at, None, "{}", "[]", None),
             (2**40, "é ü 漢", at + timedelta(days=1), b"", "[1, 2]", "[]", 2**31 - 1)]
    rows = [(i,) + kinds[i % 3][1:] if kinds[i % 3][0] is not None else kinds[i % 3] for i in range(count)]
    with database.pipelined() as conn:
        insert_columns(conn, table, COLUMNS, rows, expressions=EXPRESSIONS)
    stored = db.execute(f"SELECT n, label, at, body, doc, tags, small FROM {table} ORDER BY id").fetchall()
    assert [tuple(r.values()) for r in stored] == [
        (n, label, when, body, json.loads(doc), json.loads(tags), small)
        for n, label, when, body, doc, tags, small in rows]


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


def test_pipelined_sends_its_statements_together_when_the_block_ends(database, db, table):
    # One send per transaction, not one per statement: until the block ends its backend has received nothing
    # (not even the BEGIN), so it is idle, not busy with them; then everything is committed.
    at = datetime.now(UTC)

    def backend_state(pid: int) -> str:
        return db.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()["state"]

    with database.pipelined() as conn:
        pid = conn.info.backend_pid
        insert_columns(conn, table, COLUMNS, [(1, "a", at, b"x", "{}", "[]", 1)], expressions=EXPRESSIONS)
        conn.execute(f"INSERT INTO {table} (n, label) VALUES (2, 'b')")
        time.sleep(0.05)
        assert backend_state(pid) == "idle"
    assert backend_state(pid) == "idle"
    rows = db.execute(f"SELECT n, label FROM {table} ORDER BY n").fetchall()
    assert [(r["n"], r["label"]) for r in rows] == [(1, "a"), (2, "b")]


def test_pipelined_rolls_back_everything_when_a_statement_fails(database, db, table):
    at = datetime.now(UTC)
    with pytest.raises(Exception) as failure, database.pipelined() as conn:
        insert_columns(conn, table, COLUMNS, [(1, "kept?", at, b"x", "{}", "[]", 1)], expressions=EXPRESSIONS)
        insert_columns(conn, table, COLUMNS, [(2, "bad", at, b"x", "not json", "[]", 1)], expressions=EXPRESSIONS)
    assert "json" in str(failure.value).lower()
    assert db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"] == 0


def _lent_as_usual(database: Database) -> None:
    """The pool's one connection is idle and not in autocommit: a transaction() on it still is one."""
    with database.transaction() as conn:
        assert not conn.autocommit
        conn.execute("SELECT 1")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS


def test_pipelined_commits_nothing_when_the_block_raises_midway(database, db, table):
    # The statements before the error went out and ran; their transaction must not be committed.
    at = datetime.now(UTC)
    with pytest.raises(RuntimeError, match="midway"), database.pipelined() as conn:
        insert_columns(conn, table, COLUMNS, [(1, "sent", at, b"x", "{}", "[]", 1)], expressions=EXPRESSIONS)
        conn.execute("SELECT 1").fetchone()  # read back: the insert before it has run
        raise RuntimeError("midway")
    assert db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"] == 0
    _lent_as_usual(database)


def test_pipelined_leaves_its_connection_as_the_pool_lent_it(database, db, table):
    at = datetime.now(UTC)
    with database.pipelined() as conn:
        insert_columns(conn, table, COLUMNS, [(1, "a", at, b"x", "{}", "[]", 1)], expressions=EXPRESSIONS)
    _lent_as_usual(database)
    with pytest.raises(psycopg.Error), database.pipelined() as conn:
        insert_columns(conn, table, COLUMNS, [(2, "bad", at, b"x", "not json", "[]", 1)], expressions=EXPRESSIONS)
    _lent_as_usual(database)
    assert db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"] == 1


@pytest.mark.timeout(60)
def test_pipelined_commits_a_statement_bigger_than_the_socket_buffers(database, db, table):
    # One 40 MB statement: psycopg's commit in a pipeline used to leave most of it unsent and wait to
    # read, Postgres waiting for the rest (ClientRead): a hang only SIGKILL ended.
    at = datetime.now(UTC)
    body = b"x" * (40 << 20)
    with database.pipelined() as conn:
        insert_columns(conn, table, COLUMNS, [(1, "big", at, body, "{}", "[]", 1)], expressions=EXPRESSIONS)
    row = db.execute(f"SELECT length(body) AS n FROM {table}").fetchone()
    assert row["n"] == len(body)


def test_insert_columns_splits_rows_into_statements_of_bounded_size(db, table, monkeypatch):
    monkeypatch.setattr(db_module, "STATEMENT_BYTES", 1000)
    at = datetime.now(UTC)
    rows = [(n, f"row {n}", at, b"y" * 400, "{}", "[]", n) for n in range(10)]  # ~2 rows per statement
    insert_columns(db, table, COLUMNS, rows, expressions=EXPRESSIONS)
    stored = db.execute(f"SELECT n, length(body) AS size FROM {table} ORDER BY n").fetchall()
    assert [(r["n"], r["size"]) for r in stored] == [(n, 400) for n in range(10)]
    assert list(db_module._chunks(rows)) == [rows[i:i + 2] for i in range(0, 10, 2)]


@pytest.fixture
def bounded(services):
    database = Database(services.settings.database_url, max_size=1, write_deadline=1.0)
    yield database
    database.close()


def test_a_write_stuck_on_the_database_fails_at_its_deadline_and_the_next_one_succeeds(bounded, db, table):
    at = datetime.now(UTC)
    row = (1, "stuck", at, b"x", "{}", "[]", 1)
    with bounded.pipelined() as conn:  # the pool's one connection, warm
        insert_columns(conn, table, COLUMNS, [row], expressions=EXPRESSIONS)
    db.execute("BEGIN")
    db.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")  # the INSERT waits on it
    started = time.monotonic()
    try:
        with pytest.raises(Unavailable, match="did not answer within 1 s"), bounded.pipelined() as conn:
            insert_columns(conn, table, COLUMNS, [row], expressions=EXPRESSIONS)
        assert time.monotonic() - started < 3
        time.sleep(1)  # the server notices its client left (client_connection_check_interval)
    finally:
        db.execute("ROLLBACK")
    with bounded.pipelined() as conn:  # a new connection: the broken one was discarded
        insert_columns(conn, table, COLUMNS, [row], expressions=EXPRESSIONS)
    assert db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"] == 2
    # The broken connection's backend went away: nothing of it is left waiting on the table.
    assert wait_until(lambda: db.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                         " AND datname = current_database()").fetchone()["n"] == 0, timeout=5)


def test_statement_timeout_is_set_on_pooled_connections(services):
    database = Database(services.settings.database_url, max_size=1, statement_timeout=1.5)
    try:
        with database.transaction() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone()["statement_timeout"] == "1500ms"
    finally:
        database.close()


COPY_AS = {"doc": "jsonb", "tags": "text[]"}


def _many_rows(n: int) -> list[tuple]:
    at = datetime(2026, 11, 23, 12, 0, 1, 500, tzinfo=UTC)
    shared_doc = json.dumps({"k": "v\"\\", "é": [1, None]})  # one value in many rows (converted once)
    kinds = [
        lambda i: (i, "quotes \" ' and \\ backslash, {braces}", at, b"\x00\x01\xff\r\n" * i, shared_doc,
                   json.dumps(["t1", "t,2", "t\"3", "NULL"]), 5),
        lambda i: (None, None, at, None, "{}", "[]", None),  # NULLs in every nullable column
        lambda i: (2**40 + i, "é ü 漢\x01", at + timedelta(microseconds=i), b"", "[1, 2.5]", json.dumps(["漢"]), 2**31 - 1),
    ]
    return [kinds[i % 3](i) for i in range(n)]


def _stored(db, table) -> list[tuple]:
    return [tuple(r.values()) for r in db.execute(f"SELECT n, label, at, body, doc, tags, small FROM {table}"
                                                  " ORDER BY id").fetchall()]


def test_insert_columns_copies_many_rows_and_stores_what_the_statement_stores(db, table, monkeypatch):
    copied = []
    real_copy = db_module._copy_rows
    monkeypatch.setattr(db_module, "_copy_rows", lambda *a: copied.append(a) or real_copy(*a))
    rows = _many_rows(db_module.COPY_ROWS + 7)
    insert_columns(db, table, COLUMNS, rows, expressions=EXPRESSIONS)  # no copy_as: the unnest statement
    assert copied == []
    by_statement = _stored(db, table)
    db.execute(f"TRUNCATE {table}")
    insert_columns(db, table, COLUMNS, rows, expressions=EXPRESSIONS, copy_as=COPY_AS)
    assert len(copied) == 1
    assert _stored(db, table) == by_statement
    assert by_statement[0][4] == {"k": "v\"\\", "é": [1, None]} and by_statement[0][5] == ["t1", "t,2", "t\"3", "NULL"]
    assert by_statement[1] == (None, None, rows[1][2], None, {}, [], None)


def test_insert_columns_does_not_copy_a_few_rows_nor_inside_a_pipeline(database, db, table, monkeypatch):
    monkeypatch.setattr(db_module, "_copy_rows", lambda *a: pytest.fail("copied"))
    insert_columns(db, table, COLUMNS, _many_rows(db_module.COPY_ROWS), expressions=EXPRESSIONS, copy_as=COPY_AS)
    with database.pipelined() as conn:
        insert_columns(conn, table, COLUMNS, _many_rows(db_module.COPY_ROWS + 1), expressions=EXPRESSIONS,
                       copy_as=COPY_AS)
    assert db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"] == 2 * db_module.COPY_ROWS + 1


def test_a_value_postgres_refuses_in_a_copy_is_a_data_error_and_nothing_is_stored(database, db, table):
    rows = _many_rows(db_module.COPY_ROWS + 1)
    rows[-1] = (*rows[-1][:4], "not json", *rows[-1][5:])
    with pytest.raises(DataError) as failure, database.transaction() as conn:
        insert_columns(conn, table, COLUMNS, rows, expressions=EXPRESSIONS, copy_as=COPY_AS)
    assert is_data_error(failure.value) and "json" in str(failure.value).lower()
    assert db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"] == 0


def test_a_copy_type_insert_columns_cannot_convert_is_refused(db, table):
    with pytest.raises(ValueError, match="neither 'jsonb' nor 'text\\[\\]'"):
        insert_columns(db, table, COLUMNS, _many_rows(db_module.COPY_ROWS + 1), expressions=EXPRESSIONS,
                       copy_as={**COPY_AS, "doc": "json"})
    assert db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"] == 0


@pytest.fixture
def child_table(db, table):
    db.execute("ALTER TABLE batch_test ADD UNIQUE (n)")
    db.execute("CREATE TABLE batch_child (id bigserial PRIMARY KEY, parent bigint NOT NULL REFERENCES batch_test (n),"
               " note text)")
    yield "batch_child"
    db.execute("DROP TABLE batch_child")


CHILD = (("parent", "bigint"), ("note", "text"))


@pytest.mark.parametrize("count", [1, 2, 7])
def test_one_statement_stores_every_table_as_given_and_checks_keys_at_its_end(database, db, table, child_table,
                                                                              count):
    # 1 and 2 rows: %b placeholders; 7 rows of each table: 63 parameters, numbered $n across the CTEs.
    at = datetime(2026, 11, 23, 12, 0, 1, 500, tzinfo=UTC)
    parents = [(1000 + i, f"p{i} $1 %s \"'", at, b"\x00b", json.dumps({"i": i}), json.dumps([f"t{i}"]), i)
               for i in range(count)]
    children = [(1000 + i, f"c{i}") for i in range(count)]
    with database.pipelined() as conn, db_module.one_statement(conn):
        insert_columns(conn, table, COLUMNS, parents, expressions=EXPRESSIONS)
        insert_columns(conn, child_table, CHILD, children)  # refers to rows sent with it
    stored = db.execute(f"SELECT n, label, at, body, doc, tags, small FROM {table} ORDER BY n").fetchall()
    assert [tuple(r.values()) for r in stored] == [
        (n, label, when, body, json.loads(doc), json.loads(tags), small)
        for n, label, when, body, doc, tags, small in parents]
    kept = db.execute(f"SELECT c.note, p.label FROM {child_table} c JOIN {table} p ON p.n = c.parent"
                      " ORDER BY c.id").fetchall()
    assert [(r["note"], r["label"]) for r in kept] == [(c[1], p[1]) for c, p in zip(children, parents, strict=True)]


def test_one_statement_sends_nothing_when_its_block_fails(database, db, table, child_table):
    at = datetime.now(UTC)
    with pytest.raises(RuntimeError), database.pipelined() as conn, db_module.one_statement(conn):
        insert_columns(conn, table, COLUMNS, [(1, "a", at, b"x", "{}", "[]", 1)], expressions=EXPRESSIONS)
        raise RuntimeError("before the end")
    assert db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"] == 0
    # A row refused by a foreign key fails the whole statement, and so the transaction.
    with pytest.raises(psycopg.errors.ForeignKeyViolation), database.pipelined() as conn, \
            db_module.one_statement(conn):
        insert_columns(conn, table, COLUMNS, [(1, "a", at, b"x", "{}", "[]", 1)], expressions=EXPRESSIONS)
        insert_columns(conn, child_table, CHILD, [(1, "ok"), (2, "no such parent")])
    assert db.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"] == 0


def test_one_statement_leaves_big_rows_to_their_own_statements(database, db, table, monkeypatch):
    monkeypatch.setattr(db_module, "STATEMENT_BYTES", 1000)
    at = datetime.now(UTC)
    with database.pipelined() as conn, db_module.one_statement(conn):
        insert_columns(conn, table, COLUMNS, [(1, "small", at, b"x" * 600, "{}", "[]", 1)], expressions=EXPRESSIONS)
        insert_columns(conn, table, COLUMNS, [(2, "big", at, b"y" * 600, "{}", "[]", 1)], expressions=EXPRESSIONS)
    assert [r["n"] for r in db.execute(f"SELECT n FROM {table} ORDER BY id")] == [1, 2]  # held one sent first


def test_one_statement_keeps_the_order_of_inserts_that_cannot_join(database, db, table, child_table):
    """A message held back, then its 40 recipients (more than SMALL_INSERT: their own statement) that refer
    to it: the held row goes first (a 40-recipient send failed its foreign key when it did not)."""
    at = datetime.now(UTC)
    children = [(7, f"c{i}") for i in range(db_module.SMALL_INSERT + 8)]
    with database.pipelined() as conn, db_module.one_statement(conn):
        insert_columns(conn, table, COLUMNS, [(7, "parent", at, b"x", "{}", "[]", 1)], expressions=EXPRESSIONS)
        insert_columns(conn, child_table, CHILD, children)
        insert_columns(conn, child_table, CHILD, [(7, "after")])  # held again, sent at the end
    notes = [r["note"] for r in db.execute(f"SELECT note FROM {child_table} ORDER BY id")]
    assert notes == [c[1] for c in children] + ["after"]
