"""Postgres access: one pool per process, transactions as context managers.

Stores take a connection and run SQL on it; callers own the transaction so several stores can
commit together (intake writes the message, its recipients and its events in one commit).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from envoi.infra.deadlines import Deadlines
from envoi.infra.errors import EnvoiError, ServiceUnavailable

Connection = psycopg.Connection
Cursor = psycopg.Cursor
IntegrityError = psycopg.errors.UniqueViolation


class DataError(EnvoiError, psycopg.DataError):
    """Postgres (or the driver) refused a value itself: NUL in text, a number out of range (SQLSTATE
    class 22). A value from the request that no parameter reader caught (params.py and the readers
    check them first), so the request's fault; logged, so the missing check is found. Still a
    psycopg.DataError for whoever tells data errors apart (group commit's isolation)."""

    message = "a parameter value is invalid or out of range"
    logged = True

    def __init__(self, detail: str):
        super().__init__(detail=detail)


def is_data_error(error: BaseException) -> bool:
    """Postgres refused the values themselves (SQLSTATE classes 22 and 23), not the connection."""
    return isinstance(error, psycopg.DataError | psycopg.IntegrityError)
Jsonb = psycopg.types.json.Jsonb


class DatabaseUnavailable(ServiceUnavailable, psycopg.OperationalError):
    """The database is down, restarting, unreachable, out of connections (pool timeout), cancelled a
    statement (statement_timeout) or missed a write deadline: nothing is wrong with the request, it
    may be retried (503 / 451). str() is the driver's account of it."""


class NoConnection(DatabaseUnavailable):
    """No connection within the pool's timeout: the pool logs each failed attempt's cause."""


class Unavailable(DatabaseUnavailable):
    """A transaction outlived its deadline; its connection was broken (and is discarded)."""


def is_unavailable(error: BaseException) -> bool:
    """A DatabaseUnavailable, or the driver's own from a connection made outside a Database (migrate)."""
    return isinstance(error, psycopg.OperationalError)


@contextlib.contextmanager
def _ours(on_unavailable: Callable[[], None] | None = None) -> Iterator[None]:
    """Raise the driver's unavailable and data errors as this package's (same text, the driver's as cause);
    on_unavailable counts the former (the store-errors metric)."""
    try:
        yield
    except DatabaseUnavailable:
        if on_unavailable:
            on_unavailable()
        raise
    except EnvoiError:
        raise
    except PoolTimeout as ex:
        if on_unavailable:
            on_unavailable()
        raise NoConnection(str(ex)) from ex
    except psycopg.OperationalError as ex:
        if on_unavailable:
            on_unavailable()
        raise DatabaseUnavailable(str(ex)) from ex
    except psycopg.DataError as ex:
        raise DataError(str(ex)) from ex


class Database:
    """A region's Postgres: a small pool, handing out connections that return dict rows."""

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 10, write_deadline: float = 0.0,
                 statement_timeout: float = 0.0, pool_timeout: float = 30.0,
                 on_unavailable: Callable[[], None] | None = None, transaction_pooler: bool = False,
                 generic_plans: bool = False):
        """on_unavailable: called when Postgres cannot be reached (the store-errors metric).
        transaction_pooler: `dsn` leads to a transaction-mode pooler (pgbouncer), where consecutive
        transactions of one connection may run on different server connections: nothing may outlive a
        transaction (prepared statements, session SET, startup options, session advisory locks).
        generic_plans: a prepared statement is planned once per connection (plan_cache_mode
        force_generic_plan), not at each of its first five executions and once more; only for a pool
        whose statements' plans do not depend on their values (inserts, look-ups by key): a read with a
        LIMIT or a skewed filter may need the plan made for its values. Not behind a pooler."""
        self.dsn = dsn
        self.on_unavailable = on_unavailable
        self.write_deadline = write_deadline  # seconds; 0 = none (see bounded())
        kwargs: dict = {"row_factory": dict_row, "autocommit": False}
        if transaction_pooler:
            # psycopg prepares a statement run 5 times on a connection; through the pooler the next
            # EXECUTE may reach a server connection that never saw the PREPARE.
            kwargs["prepare_threshold"] = None
        else:  # a pooler refuses startup options (set them on the role instead)
            # Set at connect (startup packet): no statement, no round trip per transaction.
            options = [f"-c statement_timeout={int(statement_timeout * 1000)}"] if statement_timeout else []
            if generic_plans:
                options.append("-c plan_cache_mode=force_generic_plan")
            if options:
                kwargs["options"] = " ".join(options)
        self.pool = ConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            kwargs=kwargs,
            # Session SETs would land on whichever server connection the pooler lent, not on ours.
            configure=self._configure if write_deadline and not transaction_pooler else None,
            timeout=pool_timeout,
            # The pool retries a failed connect with doubling delays (1, 2, 4, 8, 16 s...) for this long,
            # then drops the attempt and the next request starts afresh. Left at psycopg's 5 minutes, a
            # process would keep answering 503 for up to half its outage after Postgres came back.
            reconnect_timeout=max(5.0, pool_timeout),
            open=True,
        )
        self._deadlines = Deadlines()

    @staticmethod
    def _configure(conn: psycopg.Connection) -> None:
        """Once per new connection. When a deadline broke a connection whose statement is still waiting
        in the server (on a lock, say), the backend must notice its client left and abort rather than
        go on and commit what the caller was told failed (Postgres 14+ polls the socket for that)."""
        if conn.info.server_version >= 140000:
            conn.execute("SET client_connection_check_interval = 500")
            conn.commit()

    @contextlib.contextmanager
    def transaction(self, *, bounded: bool = False) -> Iterator[psycopg.Connection]:
        """Yield a connection inside a transaction; commit on success, roll back on error.
        bounded: fail with Unavailable past the write deadline (see bounded())."""
        with _ours(self.on_unavailable), self.pool.connection() as conn, self.bounded(conn, bounded):
            yield conn

    @contextlib.contextmanager
    def pipelined(self) -> Iterator[psycopg.Connection]:
        """transaction() in pipeline mode: statements go out without waiting for each other's results,
        so a batch waits on Postgres only where it reads a result, and once more at commit. COPY is not
        available inside (insert_columns is). Always bounded by the write deadline.

        PERF: one round trip, not three. psycopg's own transaction in a pipeline syncs after its BEGIN
        (to learn the transaction's state) and again at commit and at the pipeline's end, each a wait
        for Postgres and a wake-up of its backend. Here the connection is in autocommit for the block
        and the block is BEGIN ... COMMIT sent as statements, synced once when the pipeline ends. An
        error in the block (Python's or a statement's) leaves the transaction open or aborted, never
        committed (no COMMIT was sent, or Postgres skipped it), and it is rolled back."""
        with _ours(self.on_unavailable), self.pool.connection() as conn, self.bounded(conn):
            conn.autocommit = True  # idle here (a pool connection): no I/O
            try:
                with conn.pipeline() as pipeline:
                    _send_once(pipeline)
                    conn.execute(b"BEGIN", prepare=False)
                    yield conn
                    conn.execute(b"COMMIT", prepare=False)
                    # Sent on leaving the pipeline: its Sync flushes libpq's buffer, and psycopg then sends
                    # whatever did not fit the socket at once before it waits to read (a statement bigger
                    # than the socket buffers, ~10 MB on loopback, half sent while both sides wait for ever:
                    # psycopg issue #685; test_db_batches covers it).
            finally:
                _leave_autocommit(conn)

    @contextlib.contextmanager
    def bounded(self, conn: psycopg.Connection, bounded: bool = True) -> Iterator[None]:
        """Break `conn` (shut its socket) if the block is still running after the write deadline;
        the error raised in the block is then Unavailable, and the connection is closed so the pool
        replaces it. A stuck database or network cannot hold a writer, nor the callers queued
        behind it, for ever."""
        if not bounded or not self.write_deadline:
            yield
            return
        key, watch = self._deadlines.watch(conn.pgconn.socket, self.write_deadline)
        try:
            yield
        except psycopg.Error as ex:
            if watch.fired:
                raise Unavailable(f"the database did not answer within {self.write_deadline:g} s") from ex
            raise
        finally:
            self._deadlines.release(key)
            if watch.fired:
                conn.close()  # even if it completed just in time: its socket is shut

    def close(self) -> None:
        self.pool.close()


def _send_once(pipeline: psycopg.Pipeline) -> None:
    """Let the statements of `pipeline` (a fresh one: psycopg drops it when it ends) wait in libpq's output
    buffer until it ends or a result is fetched: one send for the block, not a poll and a send per statement.

    PERF: psycopg, after queueing each statement of a pipeline, polls the socket and flushes it: a pipelined
    transaction of five statements made six poll/send pairs in the client (each poll releases the GIL) and
    as many reads and wake-ups of its backend. Here a statement only goes into libpq's buffer (the commands
    psycopg's own communication would run between its polls); the pipeline's Sync at the end flushes it
    all, and results are read then, as before. libpq still flushes by itself past 64 KB, and a fetch inside
    the block (RETURNING) flushes first (psycopg's send_flush_request), so nothing waits for a statement
    that was never sent. Relies on psycopg's Pipeline.command_queue and _communicate_gen (3.1-3.3);
    tests/integration/infra/test_db_batches.py checks the sends, results and failures."""
    queue = pipeline.command_queue

    def queue_only():  # Pipeline._communicate_gen for this pipeline: a generator that never waits
        while queue:
            queue.popleft()()
        return
        yield

    pipeline._communicate_gen = queue_only


def _leave_autocommit(conn: psycopg.Connection) -> None:
    """pipelined()'s connection back as the pool lends it: no transaction, not in autocommit. One that
    cannot be brought back is closed (the pool replaces it): a pool connection left in autocommit
    would commit another caller's statements one by one."""
    if conn.closed:
        return
    try:
        if conn.pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        conn.autocommit = False
    except Exception:
        conn.close()


def like_escape(value: str) -> str:
    """VALUE matched literally inside a LIKE / ILIKE pattern (its %, _ and backslashes escaped)."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def insert_columns(conn: psycopg.Connection, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[tuple],
                   *, expressions: Mapping[str, str] | None = None, returning: str | None = None,
                   copy_as: Mapping[str, str] | None = None) -> psycopg.Cursor:
    """INSERT many rows as one statement with one array parameter per column (`unnest`).

    columns: (name, Postgres type) pairs. expressions: SQL computing a column from the unnested
    values (`u.<name>`), for what cannot travel as an array of arrays (tags) or is derived server
    side. The statement text depends only on the table and columns, so psycopg prepares it once per
    connection; arrays go in binary, bodies unescaped; and unlike COPY it needs one round trip and
    runs inside a pipeline. Up to SMALL_INSERT rows without `returning` go as scalars in one multi-row
    VALUES instead ($n placeholders, prepared per row count): cheaper in Python for a few rows. Returns the
    cursor: its RETURNING rows are there once fetched (in a pipeline, after the next sync). Match them to `rows` by a key: SQL does not promise their order.

    Without `returning`, rows carrying more than STATEMENT_BYTES of text and bytes go in several
    statements: a backend holds a statement's arrays whole (and refuses one over 1 GB), so a batch
    of big messages must not become one giant statement.

    More than COPY_ROWS rows without `returning`, outside pipeline mode, go as one binary COPY
    instead, if every column with an expression has its real type in `copy_as`: 'jsonb' for JSON
    text cast to jsonb, 'text[]' for a JSON array of strings unpacked into text[] (the two expressions
    the stores use). psycopg formats COPY rows in C, where it dumps arrays of values in Python, and
    Postgres inserts COPY rows several to a WAL record without unnesting arrays or running the
    expressions per row.
    """
    expressions = expressions or {}
    if (joined := _JOINED.get()) is not None and joined.conn is conn:
        if not returning and rows and len(rows) <= SMALL_INSERT and joined.add(table, columns, expressions, rows):
            return conn.cursor()  # sent with the others when the block ends
        joined.send()  # what is held goes first: this statement's rows may refer to them (a foreign key)
    if (not returning and len(rows) > COPY_ROWS and conn.pgconn.pipeline_status == 0
            and set(expressions) <= set(copy_as or ())):
        return _copy_rows(conn, table, columns, rows, copy_as or {})
    names = [name for name, _ in columns]
    values = ", ".join(expressions.get(name, f"u.{name}") for name in names)
    cur = conn.cursor()
    if not returning and len(rows) <= SMALL_INSERT:
        # PERF: a few rows (a group commit's usual size) go as scalars, which psycopg dumps in C (arrays it
        # dumps element by element in Python, ~60 us more per statement), all in one multi-row VALUES: in
        # a pipeline psycopg polls and flushes the socket once per statement, which one INSERT per row
        # (executemany) paid per row. The text is made once per table and row count (_values_insert).
        if len(rows) == 1:  # a lone accept's row: exactly as before (no gain to have there)
            one = ", ".join(f"%b::{kind}" for _, kind in columns)
            cur.executemany(f"INSERT INTO {table} ({', '.join(names)}) SELECT {values}"
                            f" FROM (VALUES ({one})) AS u({', '.join(names)})", rows)
            return cur
        key = (table, tuple(columns), tuple(sorted(expressions.items())))
        raw = None
        for chunk in _chunks(rows) if rows else ():
            params = [value for r in chunk for value in r]
            # Prepared at first use (as executemany does), not after psycopg's five: each row count is a
            # statement of its own, and a fresh connection would send each one's text unprepared five times.
            if len(params) <= _PARSED_PARAMS:
                cur.execute(_values_insert(*key, len(chunk), raw=False), params, prepare=True)
            else:
                raw = raw or psycopg.RawCursor(conn)
                raw.execute(_values_insert(*key, len(chunk), raw=True), params, prepare=True)
        return cur
    arrays = ", ".join(f"%b::{kind}[]" for _, kind in columns)
    query = (f"INSERT INTO {table} ({', '.join(names)}) SELECT {values} FROM unnest({arrays}) AS u({', '.join(names)})"
             + (f" RETURNING {returning}" if returning else ""))
    for chunk in ([rows] if returning else _chunks(rows)):
        params = [list(column) for column in zip(*chunk, strict=True)] if chunk else [[] for _ in names]
        cur.execute(query, params)
    return cur


class _Joined:
    """The inserts one_statement() holds back: (table, columns, expressions, rows) each."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self.parts: list[tuple] = []
        self.size = 0

    def add(self, table: str, columns: Sequence[tuple[str, str]], expressions: Mapping[str, str],
            rows: Sequence[tuple]) -> bool:
        """Hold the rows back; False if they would take the statement past STATEMENT_BYTES (then they
        go on their own, as without one_statement())."""
        size = self.size + sum(sum(map(operator.length_hint, row)) for row in rows)
        if size > STATEMENT_BYTES:
            return False
        self.size = size
        self.parts.append(((table, tuple(columns), tuple(sorted(expressions.items())), len(rows)), rows))
        return True

    def send(self) -> None:
        """Send what is held, as one statement, and hold nothing."""
        if not self.parts:
            return
        shape = tuple(key for key, _ in self.parts)
        params = [value for _, rows in self.parts for row in rows for value in row]
        self.parts, self.size = [], 0
        # Prepared at first use, as insert_columns' own: a shape unprepared is parsed and planned again
        # at each of psycopg's first five executions on each connection (a large statement). The shapes
        # (rows per table: mostly one count for all four with one recipient per message) are kept among
        # psycopg's 100 prepared statements per connection, the least used evicted past that.
        if len(params) <= _PARSED_PARAMS:
            self.conn.cursor().execute(_joined_insert(shape, raw=False), params, prepare=True)
        else:
            psycopg.RawCursor(self.conn).execute(_joined_insert(shape, raw=True), params, prepare=True)


_JOINED: contextvars.ContextVar[_Joined | None] = contextvars.ContextVar("envoi_joined_inserts", default=None)


@contextlib.contextmanager
def one_statement(conn: psycopg.Connection) -> Iterator[None]:
    """insert_columns() calls on `conn` inside the block, of up to SMALL_INSERT rows each and no
    RETURNING, go out together as one statement when the block ends (data-modifying CTEs; the
    foreign keys are checked at the statement's end, so a row may refer to one inserted with it).
    An insert_columns() call that cannot join (more rows, RETURNING, too big) first sends what is
    held, so inserts keep their order (a batch send's recipients refer to its message). Nothing
    inside may read the rows back before the block ends; other statements inside go out first. An
    error in the block sends none of what is still held.

    PERF: in a pipeline each statement costs psycopg ~25-30 us of Python (a cursor, the query's
    conversion, a poll and a flush) and Postgres an executor start and end: a group commit's
    messages, recipients, events and stats rows were four statements."""
    joined = _Joined(conn)
    token = _JOINED.set(joined)
    try:
        yield
    finally:
        _JOINED.reset(token)
    joined.send()


@functools.lru_cache(maxsize=256)
def _joined_insert(shape: tuple[tuple, ...], raw: bool) -> str:
    """One statement inserting each (table, columns, expressions, count) of `shape`: the last as the
    statement, the others as CTEs before it; placeholders numbered across them."""
    parts, first = [], 1
    for table, columns, expressions, count in shape:
        parts.append(_values_insert(table, columns, expressions, count, raw, first))
        first += count * len(columns)
    ctes = ", ".join(f"i{n} AS ({text})" for n, text in enumerate(parts[:-1]))
    return (f"WITH {ctes} " if ctes else "") + parts[-1]


SMALL_INSERT = 32  # rows at most that insert_columns sends as scalars (one multi-row VALUES) rather than as arrays
STATEMENT_BYTES = 16 << 20  # text and bytes per insert_columns statement (one row may carry more)
COPY_ROWS = 64  # rows above which insert_columns COPYs (outside pipeline mode): two round trips, then C
_TYPE_NAMES = {"int": "integer"}  # SQL's names psycopg's type registry does not know
_JSONB_VERSION = b"\x01"  # jsonb's binary input: a version byte, then the JSON text


def _copy_rows(conn: psycopg.Connection, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[tuple],
               copy_as: Mapping[str, str]) -> psycopg.Cursor:
    """insert_columns' COPY: rows in binary, converting the columns named in copy_as from the JSON text
    the statements take (a value shared by many rows, as a draft's options, is converted once)."""
    types, converters = [], {}
    for i, (name, kind) in enumerate(columns):
        real = copy_as.get(name)
        if real is None:
            types.append(_TYPE_NAMES.get(kind, kind))
        elif real == "jsonb":
            # Binary jsonb is the version byte and the text: sent as bytea's bytes, read as the column's jsonb.
            types.append("bytea")
            converters[i] = lambda text: None if text is None else _JSONB_VERSION + text.encode()
        elif real == "text[]":
            types.append("text[]")
            converters[i] = lambda text: None if text is None else [str(v) for v in json.loads(text)]
        else:
            raise ValueError(f"copy_as[{name!r}]: {real!r} is neither 'jsonb' nor 'text[]'")
    cur = conn.cursor()
    with cur.copy(f"COPY {table} ({', '.join(name for name, _ in columns)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(types)
        if not converters:
            for row in rows:
                copy.write_row(row)
            return cur
        memo: dict[int, dict] = {i: {} for i in converters}
        for row in rows:
            row = list(row)
            for i, convert in converters.items():
                seen = memo[i]
                value = row[i]
                try:
                    row[i] = seen[value]
                except KeyError:
                    row[i] = seen[value] = convert(value)
            copy.write_row(row)
    return cur


@functools.lru_cache(maxsize=256)
def _values_insert(table: str, columns: tuple[tuple[str, str], ...], expressions: tuple[tuple[str, str], ...],
                   count: int, raw: bool, first: int = 1) -> str:
    """insert_columns' INSERT of `count` rows of scalars: VALUES ($1::type, ...), ... with $n placeholders
    (raw, numbered from `first`) or %b ones."""
    names = ", ".join(name for name, _ in columns)
    given = dict(expressions)
    values = ", ".join(given.get(name, f"u.{name}") for name, _ in columns)
    width = len(columns)
    rows = ", ".join("(" + ", ".join((f"${first + r * width + i}" if raw else "%b") + f"::{kind}"
                                     for i, (_, kind) in enumerate(columns)) + ")" for r in range(count))
    return f"INSERT INTO {table} ({names}) SELECT {values} FROM (VALUES {rows}) AS u({names})"


# psycopg keeps the parse of a %-query of at most this many parameters (psycopg._queries'
# MAX_CACHED_STATEMENT_PARAMS) and parses a larger one again on every execute: those go with $n placeholders
# (RawCursor), which it does not parse. Below it, the %b form measured a few us cheaper per statement.
_PARSED_PARAMS = 50


def _chunks(rows: Sequence[tuple]) -> Iterator[Sequence[tuple]]:
    """rows in runs of at most STATEMENT_BYTES of str/bytes values (at least one row each)."""
    if len(rows) < 2:  # nothing to split (and nothing to measure on a lone accept's rows)
        yield rows
        return
    start, size = 0, 0
    for i, row in enumerate(rows):
        # PERF: length_hint in C per value (~0.5 us a row against ~2): the length of str and bytes, 0 for
        # numbers, dates and None (a list or dict would count its items: a bound, not a byte count).
        n = sum(map(operator.length_hint, row))
        if size + n > STATEMENT_BYTES and i > start:
            yield rows[start:i]
            start, size = i, 0
        size += n
    yield rows[start:]


def connect(dsn: str, autocommit: bool = True, timeout: int | None = None,
            transaction_pooler: bool = False) -> psycopg.Connection:
    """A single connection outside the pool, for migrations and admin tools (timeout: seconds to connect)."""
    extra: dict = {} if timeout is None else {"connect_timeout": timeout}
    if transaction_pooler:
        extra["prepare_threshold"] = None
    return psycopg.connect(dsn, autocommit=autocommit, row_factory=dict_row, **extra)
