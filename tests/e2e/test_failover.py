"""Failover of the stores under a running stack of real processes (`envoi api` under gunicorn, `envoi relay`,
`envoi webhooks dispatch`): nothing accepted is lost, nothing hangs, and everything resumes without a restart.

Redis: a private primary + replica with three `redis-sentinel`s (tests/support/redis_sentinel.py); the
processes reach it with ENVOI_REDIS_SENTINELS / ENVOI_REDIS_SENTINEL_SERVICE. Mid-load the primary is
SIGKILLed; Sentinel promotes the replica.

Postgres: cut mid-load (a TCP proxy in front of it taken down for 8 s, as in a restart); a private cluster
really restarted (`pg_ctl restart -m fast`) and crashed (`-m immediate`) mid-load; and the whole stack
through a private `pgbouncer` in transaction mode. Select with `-m failover`.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections import Counter

import psycopg
import psycopg.rows
import pytest
import redis
import requests
from psycopg.conninfo import conninfo_to_dict

from envoi import runtime
from envoi.api.errors import UNAVAILABLE
from envoi.dev.sink import Sink
from envoi.infra.migrate import ensure_database, migrate
from tests.conftest import REDIS_BASE, _free_redis_db
from tests.support.pgbouncer import PgBouncer
from tests.support.postgres_cluster import PostgresCluster
from tests.support.processes import Proc, envoi, free_port, http_ok, process_env, stop_all
from tests.support.redis_sentinel import SERVICE, SentinelCluster
from tests.support.relay import wait_until
from tests.support.tcp_proxy import TcpProxy
from tests.support.webhook_receiver import Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.failover]
MESSAGE_ID = re.compile(r"^Message-ID:\s*<([^>]+)>", re.M | re.I)
REQUEST_TIMEOUT = 30  # a request without an answer by then counts as a hang (the machine is slow and shared)


class Stack:
    """api + relay + webhook dispatcher (or RQ worker) on their own ports, delivering to `sink`, with extra env."""

    def __init__(self, settings, sink: Sink, tmp, **env):
        self.tmp, self.api_port = tmp, free_port()
        self.env = process_env(settings, ENVOI_SMTP_ROUTE=f"127.0.0.1:{sink.smtp_port}", ENVOI_RETRY_SCHEDULE="1,2",
                               ENVOI_RELAY_HOST=f"failover-{uuid.uuid4().hex[:6]}", ENVOI_WEBHOOK_ALLOW="127.0.0.1/32",
                               ENVOI_WEBHOOK_RETRY_SCHEDULE="1", **env)
        self.procs: list[Proc] = []

    def start(self, *names: str) -> Stack:
        argv = {"api": envoi("api", "--bind", f"127.0.0.1:{self.api_port}", "--workers", "2", "--threads", "4"),
                "relay": envoi("relay", "--metrics-port", "0"),
                "worker": envoi("worker", "--processes", "2"),
                "webhooks": envoi("webhooks", "dispatch", "--processes", "1")}
        started = [Proc(name, argv[name], self.env, self.tmp) for name in names]  # start-ups overlap
        self.procs.extend(started)
        for name, proc in zip(names, started, strict=True):
            ready = {"api": lambda: http_ok(f"{self.base}/healthz"),
                     "relay": lambda p=proc: "delivering via" in p.output(),
                     "worker": lambda p=proc: "process(es)" in p.output(),
                     "webhooks": lambda p=proc: "webhooks dispatch:" in p.output()}[name]
            proc.wait_ready(ready, timeout=90)
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def output(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()}" for p in self.procs)

    def stop(self) -> None:
        stop_all(self.procs)


class Load(threading.Thread):
    """Sends `n` messages over HTTP, one recipient each; keeps every answer's status and duration."""

    def __init__(self, base: str, domain: str, key: str, n: int, tag: str, pause: float = 0.02):
        super().__init__(daemon=True)
        self.url, self.key, self.domain, self.n, self.tag, self.pause = f"{base}/v3/{domain}/messages", key, domain, n, tag, pause
        self.accepted: set[tuple[str, str]] = set()
        self.answers: Counter = Counter()
        self.slowest = 0.0
        self.last_ok = 0.0
        self.refusals: list[tuple[int, dict, str | None]] = []
        self.stop = threading.Event()  # set: no more sends after the one in flight

    def run(self) -> None:
        session = requests.Session()
        session.auth = ("api", self.key)
        for i in range(self.n):
            if self.stop.is_set():
                break
            to = f"r{i}@d{i % 10}.{self.tag}.test"
            started = time.monotonic()
            try:
                resp = session.post(self.url, data={"from": f"s@{self.domain}", "to": to, "subject": f"m{i}",
                                                    "text": "failover"}, timeout=REQUEST_TIMEOUT)
            except requests.RequestException as ex:
                self.answers[type(ex).__name__] += 1
                session = requests.Session()
                session.auth = ("api", self.key)
                continue
            finally:
                self.slowest = max(self.slowest, time.monotonic() - started)
            self.answers[resp.status_code] += 1
            if resp.status_code == 200:
                self.last_ok = time.monotonic()
                self.accepted.add((resp.json()["id"].strip("<>"), to))
            else:
                self.refusals.append((resp.status_code, resp.json(), resp.headers.get("Retry-After")))
            time.sleep(self.pause)


class LiveReader(threading.Thread):
    """A client of the live events stream (SSE) that reconnects with Last-Event-ID, as EventSource does."""

    def __init__(self, base: str, domain: str, key: str):
        super().__init__(daemon=True)
        self.url, self.auth = f"{base}/v3/{domain}/events/live", ("api", key)
        self.seen: list[dict] = []
        self.stop = threading.Event()
        self.last_id: str | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            try:
                with requests.get(self.url, auth=self.auth, headers=headers, stream=True, timeout=20) as resp:
                    if resp.status_code != 200:
                        time.sleep(1)
                        continue
                    for line in resp.iter_lines(decode_unicode=True):
                        if self.stop.is_set():
                            return
                        if line.startswith("id: "):
                            self.last_id = line[4:]
                        elif line.startswith("data: "):
                            self.seen.append(json.loads(line[6:]))
            except requests.RequestException:
                time.sleep(0.5)

    def saw(self, message_id: str, event: str) -> bool:
        return any(e.get("event") == event and e.get("message", {}).get("headers", {}).get("message-id") == message_id
                   for e in list(self.seen))


def delivered(sink: Sink) -> Counter:
    counts: Counter = Counter()
    for m in sink.messages():
        match = MESSAGE_ID.search(m["data"])
        for rcpt in m["rcpt_tos"]:
            counts[(match.group(1) if match else "", rcpt)] += 1
    return counts


def send_one(base: str, domain: str, key: str, to: str) -> str:
    resp = requests.post(f"{base}/v3/{domain}/messages", auth=("api", key), timeout=REQUEST_TIMEOUT,
                         data={"from": f"s@{domain}", "to": to, "subject": "after", "text": "after the failover"})
    assert resp.status_code == 200, resp.text
    return resp.json()["id"].strip("<>")


@pytest.fixture
def sentinels(tmp_path):
    with SentinelCluster(tmp_path / "redis") as cluster:
        yield cluster


@pytest.fixture
def sink():
    with Sink(max_messages=5000) as s:
        yield s


@pytest.mark.parametrize("how", ["sigkill", "switch-over"])
def test_redis_primary_fails_over_mid_load_through_sentinel(how, settings, services, account, domain, api_key,
                                                            sentinels, sink, tmp_path):
    """sigkill: the primary dies; switch-over: SENTINEL FAILOVER demotes it (it stays up, read-only, and
    clients still connected to it must notice and ask the sentinels again)."""
    (tmp_path / "procs").mkdir()
    # The processes know Redis only through the sentinels: REDIS_URL gives the db number, its host and
    # port lead nowhere.
    stack = Stack(settings, sink, tmp_path / "procs", REDIS_URL="redis://127.0.0.1:1/0",
                  ENVOI_REDIS_SENTINELS=sentinels.sentinels, ENVOI_REDIS_SENTINEL_SERVICE=SERVICE)
    # The load goes to `domain`; the webhook watches a second domain of the account, so that its deliveries
    # are not queued behind the load's (what is asserted is that they resume, not their throughput).
    hooked = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.example.test",
                                          dkim_key_size=1024, verified=True)["name"]
    try:
        stack.start("api", "relay", "webhooks")
        name = domain["name"]
        with Receiver() as hooks:
            resp = requests.post(f"{stack.base}/v3/domains/{hooked}/webhooks", auth=("api", api_key), timeout=30,
                                 data={"id": "delivered", "url": hooks.url("/delivered")})
            assert resp.status_code == 200, resp.text
            live = LiveReader(stack.base, hooked, api_key)
            live.start()

            def hooked_and_live(message_id: str) -> None:
                wait_until(lambda: any(r["payload"] and r["payload"]["event-data"]["message"]["headers"]["message-id"]
                                       == message_id for r in hooks.got("/delivered")), timeout=120, interval=0.3)
                wait_until(lambda: live.saw(message_id, "delivered"), timeout=60, interval=0.3)

            wait_until(lambda: live.last_id is not None or _ping(stack, hooked, api_key), timeout=90, interval=2)
            hooked_and_live(send_one(stack.base, hooked, api_key, "before@early.sentinel.test"))

            load = Load(stack.base, name, api_key, 240, "sentinel")
            load.start()
            wait_until(lambda: len(load.accepted) >= 60, timeout=120, interval=0.05)
            old = sentinels.kill_primary() if how == "sigkill" else sentinels.switch_over()
            started = time.monotonic()
            new = sentinels.wait_failover(old)
            print(f"\nRedis primary :{old} {how}; Sentinel promoted :{new} after {time.monotonic() - started:.1f} s")

            # After the failover: a new message is delivered, its webhook arrives, the live stream shows it
            # (the same SSE client: it reconnected, or its stream carried on, without a gap).
            after = send_one(stack.base, hooked, api_key, "after@late.sentinel.test")
            hooked_and_live(after)
            # ... and it went through the promoted primary.
            stream = redis.Redis(port=new).xrange(f"envoi:eu:events:live:{account['id']}")
            assert any(after.encode() in fields[b"e"] for _, fields in stream)
            live.stop.set()
            load.join(600)
            assert not load.is_alive()

        with contextlib.suppress(AssertionError):  # reported below
            wait_until(lambda: load.accepted <= set(delivered(sink)), timeout=180, interval=0.5)
        counts = delivered(sink)
        lost = load.accepted - set(counts)
        print(f"sent {load.n}: answers {dict(load.answers)}, accepted {len(load.accepted)}, lost {len(lost)}, "
              f"slowest answer {load.slowest:.1f} s; webhooks {len(hooks.requests)}, live events {len(live.seen)}")
        assert not lost, f"accepted but never delivered: {sorted(lost)[:5]}"
        assert set(load.answers) <= {200, 503}, f"{dict(load.answers)}\n{stack.output()}"  # no 500, no hang
        for status, body, retry_after in load.refusals:
            assert set(body) == {"message"} and retry_after, (status, body, retry_after)
        assert len(load.accepted) > load.n // 2
    except BaseException:
        print(stack.output(), sentinels.output())
        raise
    finally:
        stack.stop()


def _ping(stack: Stack, domain: str, key: str) -> bool:
    """Until the live reader has an id: send one message and let its events arrive."""
    send_one(stack.base, domain, key, f"warm-{uuid.uuid4().hex[:6]}@warm.sentinel.test")
    return False


# Postgres ------------------------------------------------------------------------------------------
DEADLINE = 3  # the processes' write deadline and pool timeout (seconds) in the outage test


def test_postgres_down_mid_load_answers_503_then_recovers_without_restart(settings, account, domain, api_key, db,
                                                                        sink, tmp_path):
    """Postgres goes away mid-load (every connection cut, nothing listening: a restart, through the TCP
    proxy; the machine's shared server is never restarted) and comes back 8 s later."""
    params = conninfo_to_dict(settings.database_url)
    (tmp_path / "procs").mkdir()
    name = domain["name"]
    with TcpProxy((params.get("host", "127.0.0.1"), int(params.get("port", 5432)))) as proxy:
        stack = Stack(settings, sink, tmp_path / "procs", DATABASE_URL=proxy.dsn(settings.database_url),
                      ENVOI_DB_WRITE_DEADLINE=DEADLINE, ENVOI_DB_POOL_TIMEOUT=DEADLINE)
        try:
            stack.start("api", "relay")
            load = Load(stack.base, name, api_key, 300, "pgdown")
            load.start()
            wait_until(lambda: len(load.accepted) >= 60, timeout=120, interval=0.05)
            proxy.down()
            down_at = sum(load.answers.values())
            time.sleep(8)
            proxy.up()
            up_at = time.monotonic()
            during = sum(load.answers.values()) - down_at
            wait_until(lambda: load.last_ok > up_at or not load.is_alive(), timeout=60, interval=0.1)
            recovered_in = load.last_ok - up_at
            load.join(600)
            assert not load.is_alive()
            # Back without restarting anything: the same processes accept and deliver. Each gunicorn worker
            # has its own pool: one still reconnecting answers 503 with Retry-After, as a client retries.
            deadline = time.monotonic() + 30
            while True:
                resp = requests.post(f"{stack.base}/v3/{name}/messages", auth=("api", api_key),
                                     timeout=REQUEST_TIMEOUT, data={"from": f"s@{name}", "to": "after@late.pgdown.test",
                                                                    "subject": "after", "text": "after the failover"})
                if resp.status_code != 503 or time.monotonic() > deadline:
                    break
                assert resp.headers.get("Retry-After"), resp.headers
                time.sleep(1)
            assert resp.status_code == 200, resp.text
            after = resp.json()["id"].strip("<>")
            assert all(proc.popen.poll() is None for proc in stack.procs), stack.output()
            with contextlib.suppress(AssertionError):  # reported below
                wait_until(lambda: load.accepted | {(after, "after@late.pgdown.test")} <= set(delivered(sink)),
                           timeout=180, interval=0.5)
        except BaseException:
            print(stack.output())
            raise
        finally:
            stack.stop()

    counts = delivered(sink)
    lost = load.accepted - set(counts)
    refused = sum(n for answer, n in load.answers.items() if answer != 200)
    # Nothing half-written: every message of the domain has its recipient and its accepted event.
    rows = db.execute(
        "SELECT m.message_id, (SELECT count(*) FROM recipients r WHERE r.message_pk = m.id) AS recipients,"
        " (SELECT count(*) FROM events e WHERE e.domain_id = m.domain_id AND e.message_id = m.message_id"
        "  AND e.event = 'accepted') AS accepted FROM messages m WHERE m.domain_id = %s", (domain["id"],)).fetchall()
    stored = {row["message_id"] for row in rows}
    unanswered = stored - {mid for mid, _ in load.accepted} - {after}
    print(f"\nsent {load.n}: answers {dict(load.answers)} ({during} while down), accepted {len(load.accepted)}, "
          f"lost {len(lost)}, slowest answer {load.slowest:.1f} s; stored without a 200: {len(unanswered)}; "
          f"first 200 {recovered_in:.1f} s after Postgres was back")
    assert not lost, f"accepted but never delivered: {sorted(lost)[:5]}"
    assert set(load.answers) <= {200, 503}, dict(load.answers)  # no 500, no timeout
    assert refused > 0, "no request met the outage: nothing was tested"
    for status, body, retry_after in load.refusals:
        assert body == {"message": UNAVAILABLE} and retry_after, (status, body, retry_after)
    assert load.slowest < 2 * DEADLINE + 10, "a request waited well past the deadlines"
    assert 0 < recovered_in < 15, "sends did not succeed again soon after Postgres came back"
    assert {mid for mid, _ in load.accepted} <= stored
    assert all(row["recipients"] == 1 and row["accepted"] == 1 for row in rows), [r for r in rows if r["recipients"] != 1
                                                                                   or r["accepted"] != 1][:5]
    # At-least-once: a commit whose reply the cut connection lost is a 503 the caller retries, and is still
    # sent. So a stored message without a 200 is possible, but only as many as there were refusals.
    assert len(unanswered) <= refused


def test_postgres_restarted_and_crashed_mid_load_answers_503_then_recovers_exactly_once(settings, sink, tmp_path):
    """A private cluster (tests/support/postgres_cluster.py) under the api and the relay is restarted with
    `pg_ctl restart -m fast`, then crashed and recovered (`-m immediate`), each mid-load: meanwhile the API
    answers a Mailgun-style 503 with Retry-After (never a 500 or a hang); the same processes carry on;
    every message that got a 200 reaches the sink exactly once (by Message-Id); nothing is half-written."""
    (tmp_path / "procs").mkdir()
    with PostgresCluster() as pg:
        dsn = pg.dsn("envoi_restart")
        ensure_database(dsn)
        migrate(dsn)
        own = settings.replace(database_url=dsn, redis_url=f"{REDIS_BASE}/{_free_redis_db()}")
        svc = runtime.build(own, pool_size=2)
        try:
            account = svc.accounts.create_account(f"acct-{uuid.uuid4().hex[:6]}")
            name = svc.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.example.test", dkim_key_size=1024,
                                           verified=True)["name"]
            _, key = svc.accounts.create_key(account["id"], "admin")
        finally:
            svc.close()
        stack = Stack(own, sink, tmp_path / "procs", ENVOI_DB_WRITE_DEADLINE=DEADLINE, ENVOI_DB_POOL_TIMEOUT=DEADLINE)
        took: dict[str, float] = {}
        recovered: dict[str, float] = {}
        try:
            stack.start("api", "relay")
            load = Load(stack.base, name, key, 2000, "pgrestart", pause=0.01)
            load.start()
            for mode in ("fast", "immediate"):
                mark = len(load.accepted)
                wait_until(lambda mark=mark: len(load.accepted) >= mark + 40, timeout=60, interval=0.05)
                took[mode] = pg.restart(mode)
                back = time.monotonic()
                wait_until(lambda back=back: load.last_ok > back, timeout=30, interval=0.05)
                recovered[mode] = load.last_ok - back
            mark = len(load.accepted)
            wait_until(lambda: len(load.accepted) >= mark + 20, timeout=60, interval=0.05)
            load.stop.set()
            load.join(60)
            assert not load.is_alive()
            assert all(proc.popen.poll() is None for proc in stack.procs), stack.output()  # nothing restarted
            with contextlib.suppress(AssertionError):  # reported below
                wait_until(lambda: load.accepted <= set(delivered(sink)), timeout=60, interval=0.2)
            time.sleep(1.5)  # a late duplicate (sent again after the crash) would arrive by now
            counts = delivered(sink)
            with psycopg.connect(dsn, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
                rows = conn.execute(
                    "SELECT m.message_id, (SELECT count(*) FROM recipients r WHERE r.message_pk = m.id) AS recipients,"
                    " (SELECT count(*) FROM events e WHERE e.domain_id = m.domain_id AND e.message_id = m.message_id"
                    "  AND e.event = 'accepted') AS accepted FROM messages m").fetchall()
                orphans = conn.execute("SELECT count(*) AS n FROM recipients r WHERE NOT EXISTS"
                                       " (SELECT 1 FROM messages m WHERE m.id = r.message_pk)").fetchone()["n"]
        except BaseException:
            print(stack.output(), pg.output())
            raise
        finally:
            stack.stop()
            redis.Redis.from_url(own.redis_url).flushdb()

    ours = {key: n for key, n in counts.items() if key[1].endswith(".pgrestart.test")}
    lost = load.accepted - set(ours)
    duplicated = {key: n for key, n in ours.items() if n > 1}
    stored = {row["message_id"] for row in rows}
    unanswered = stored - {mid for mid, _ in load.accepted}
    refused = sum(n for answer, n in load.answers.items() if answer != 200)
    print(f"\nsent {sum(load.answers.values())}: answers {dict(load.answers)}, accepted {len(load.accepted)}, "
          f"lost {len(lost)}, duplicated {len(duplicated)}, stored without a 200 {len(unanswered)}, slowest answer "
          f"{load.slowest:.1f} s; restart took {took}, first 200 after it {recovered}")
    assert not lost, f"accepted but never delivered: {sorted(lost)[:5]}"
    assert not duplicated, f"delivered more than once: {sorted(duplicated.items())[:5]}"
    assert set(load.answers) <= {200, 503}, dict(load.answers)  # no 500, no timeout
    assert refused > 0, "no request met a restart: nothing was tested"
    for status, body, retry_after in load.refusals:
        assert body == {"message": UNAVAILABLE} and retry_after, (status, body, retry_after)
    assert all(seconds < 10 for seconds in recovered.values()), recovered
    # Nothing half-written: every stored message has its recipient and its accepted event, no recipient
    # lacks its message; a commit whose answer was lost is a 503 (sent all the same), never more of them.
    assert {mid for mid, _ in load.accepted} <= stored
    assert all(row["recipients"] == 1 and row["accepted"] == 1 for row in rows), [
        r for r in rows if r["recipients"] != 1 or r["accepted"] != 1][:5]
    assert orphans == 0
    assert len(unanswered) <= refused


@pytest.fixture
def pgbouncer(settings):
    with PgBouncer(settings.database_url) as bouncer:
        yield bouncer


def test_the_stack_runs_through_pgbouncer_in_transaction_mode(settings, account, domain, api_key, pgbouncer, sink,
                                                              tmp_path):
    (tmp_path / "procs").mkdir()
    name = domain["name"]
    before = pgbouncer.stats()["total_xact_count"]
    stack = Stack(settings, sink, tmp_path / "procs", DATABASE_URL=pgbouncer.dsn(), ENVOI_DB_TRANSACTION_POOLER=1,
                  ENVOI_DATABASE_DIRECT_URL=settings.database_url)
    try:
        stack.start("api", "relay", "webhooks")
        # Two senders at once over 2 server connections: each process's transactions hop between them.
        loads = [Load(stack.base, name, api_key, 40, f"bouncer{i}", pause=0) for i in range(2)]
        for load in loads:
            load.start()
        for load in loads:
            load.join(600)
        accepted = set().union(*(load.accepted for load in loads))
        assert [dict(load.answers) for load in loads] == [{200: 40}, {200: 40}], stack.output()
        wait_until(lambda: accepted <= set(delivered(sink)), timeout=180, interval=0.5)
        # The read side through the pooler too: the events API lists every delivery.
        page = requests.get(f"{stack.base}/v3/{name}/events", params={"event": "delivered", "limit": 300},
                            auth=("api", api_key), timeout=REQUEST_TIMEOUT).json()
        assert {mid for mid, _ in accepted} <= {item["message"]["headers"]["message-id"] for item in page["items"]}
    except BaseException:
        print(stack.output(), pgbouncer.log())
        raise
    finally:
        stack.stop()
    assert pgbouncer.stats()["total_xact_count"] - before > 80  # it all went through the pooler


def test_events_upkeep_takes_its_session_lock_on_the_direct_connection(settings, pgbouncer):
    """The events partition upkeep holds a session-level advisory lock across transactions: through the
    pooler its unlock could land on another server connection and the lock stay held for ever. With
    ENVOI_DATABASE_DIRECT_URL it takes and releases it on a connection of its own, time after time."""
    svc = runtime.build(settings.replace(database_url=pgbouncer.dsn(), db_transaction_pooler=True,
                                         database_direct_url=settings.database_url), pool_size=2)
    try:
        assert svc.events.maintenance_db is not svc.db and svc.events.maintenance_db.dsn == settings.database_url
        for _ in range(3):
            assert svc.events.maintain(wait=False) is not None  # not refused: the last run let go of it
    finally:
        svc.close()
