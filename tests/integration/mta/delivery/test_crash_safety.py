"""Crash safety of the relay: SIGKILL mid-run and a Redis FLUSHALL lose nothing.

The relay runs as a real process (`envoi relay`) delivering to an in-test sink through
ENVOI_SMTP_ROUTE. Select with `-m crash`.
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from envoi.accounts.service import Principal
from envoi.dev.sink import Sink
from envoi.mta.compose import compose
from envoi.mta.delivery.engine import UNRECORDED_PER_CONNECTION
from tests.conftest import flush_redis
from tests.support.processes import Proc, envoi, process_env
from tests.support.relay import wait_until

pytestmark = pytest.mark.crash
N = 2000
BATCH = 200  # ENVOI_RELAY_BATCH: the relay holds at most 2 x BATCH recipients in flight
KILLS = 3
CONNECTIONS = 10  # ENVOI_RELAY_CONNECTIONS: at most this many messages are between their "." and 250
# Sent and not yet recorded at a kill: on the wire after "." (at most one per connection) or between
# the 250 and the commit of its outcome. The relay holds at most this many (before: 19-101 a kill).
IN_FLIGHT_BOUND = UNRECORDED_PER_CONNECTION * CONNECTIONS
ENQUEUERS = 8  # threads accepting the set-up's messages
MESSAGE_ID = re.compile(r"^Message-ID:\s*<([^>]+)>", re.M | re.I)


@pytest.fixture
def sink():
    with Sink(max_messages=N * 2) as s:
        yield s


def start_relay(settings, sink, tmp_path, name: str, host: str) -> Proc:
    # The same relay host across restarts: the new relay takes that host's leases back at once.
    env = process_env(settings, ENVOI_SMTP_ROUTE=f"127.0.0.1:{sink.smtp_port}", ENVOI_RELAY_BATCH=BATCH,
                      ENVOI_RELAY_CONNECTIONS=CONNECTIONS,
                      ENVOI_RELAY_HOST=host, ENVOI_RETRY_SCHEDULE="1,2")
    return Proc(name, envoi("relay", "--metrics-port", "0"), env, tmp_path)


def enqueue(services, account, domain, n: int, tag: str) -> set[tuple[str, str]]:
    """n single-recipient messages accepted as the API accepts them. From ENQUEUERS threads, as concurrent
    requests would be: their accepts share commits (the group commit); one after another, each waited
    for its own, and the set-up took about a third of the SIGKILL test."""
    principal = Principal(None, account["id"], "admin")
    text = "x" * 2000

    def accept(i: int) -> tuple[str, str]:
        to = f"r{i}@d{i % 50}.{tag}.test"
        values = {"from": [f"s@{domain['name']}"], "to": [to], "subject": [f"m{i}"], "text": [text]}
        return services.intake.accept(principal, domain, compose(domain["name"], values, [], [])).strip("<>"), to

    with ThreadPoolExecutor(ENQUEUERS) as pool:
        return set(pool.map(accept, range(n)))


def received(sink, domain) -> Counter:
    """(message id, recipient) pairs the sink got for `domain`; a relay also delivers mail other tests left queued."""
    seen: Counter = Counter()
    for m in sink.messages():
        match = MESSAGE_ID.search(m["data"])
        if not (match and match.group(1).endswith("@" + domain["name"])):
            continue
        for rcpt in m["rcpt_tos"]:
            seen[(match.group(1) if match else "", rcpt)] += 1
    return seen


def delivered_rows(db, domain) -> int:
    return db.execute("SELECT count(*) AS n FROM recipients WHERE domain_id = %s AND status = 'delivered'",
                      (domain["id"],)).fetchone()["n"]


def delivered_keys(db, domain) -> set[tuple[str, str]]:
    rows = db.execute("SELECT m.message_id, r.address FROM recipients r JOIN messages m ON m.id = r.message_pk"
                      " WHERE r.domain_id = %s AND r.status = 'delivered'", (domain["id"],)).fetchall()
    return {(r["message_id"], r["address"]) for r in rows}


def settled(sink) -> int:
    """The sink's count once it has read what the killed relay wrote before dying."""
    last = -1
    while (now := sink.stats()["messages"]) != last:
        last = now
        time.sleep(0.3)
    return now


def test_sigkill_mid_run_loses_nothing(services, settings, account, domain, db, sink, tmp_path):
    """KILLS times kill -9 the relay mid-run and restart it: every message arrives, and the only
    duplicates are the messages in flight after their final "." at a kill (the sink had them, their
    outcome was not yet committed), each re-sent once."""
    expected = enqueue(services, account, domain, N, "kill")
    host = f"crash-{uuid.uuid4().hex[:6]}"
    starts: list[float] = []
    in_flight: list[set[tuple[str, str]]] = []  # per kill: at the sink, not durably recorded
    on_the_wire: list[int] = []  # per kill: connections cut right after the sink's 250 to a DATA
    for k in range(KILLS):
        starts.append(time.time())
        cut_before = sink.cut_after_data()
        relay = start_relay(settings, sink, tmp_path, f"relay{k + 1}", host)
        try:
            target = (k + 1) * N // (KILLS + 1)
            wait_until(lambda target=target: sink.stats()["messages"] >= target, timeout=40, interval=0.02)
            relay.popen.send_signal(signal.SIGKILL)
            relay.popen.wait(10)
        finally:
            relay.stop()
        settled(sink)  # what the relay wrote before dying has reached the sink (and any COMMIT it sent, Postgres)
        durable = delivered_keys(db, domain)
        assert len(durable) < N, "the run finished before the kill: nothing was tested"
        sent = {(MESSAGE_ID.search(m["data"]).group(1), m["rcpt_tos"][0]) for m in sink.messages()
                if m["connected_at"] >= starts[k]}
        in_flight.append(sent - durable)
        on_the_wire.append(sink.cut_after_data() - cut_before)
    starts.append(time.time())
    relay = start_relay(settings, sink, tmp_path, "relay-last", host)
    try:
        wait_until(lambda: expected <= set(received(sink, domain)), timeout=60, interval=0.2)
        wait_until(lambda: delivered_rows(db, domain) == N, timeout=20)
    finally:
        relay.stop()
    seen = received(sink, domain)
    assert set(seen) == expected  # every message delivered, nothing else
    # Each copy beyond the first is one that a killed relay had sent but not recorded: nothing else is
    # ever sent twice (no relay sends a message twice, no lease runs out under a live relay).
    extra = sum(n - 1 for n in seen.values())
    assert extra == sum(len(f) for f in in_flight)
    generations: dict[tuple[str, str], list[int]] = {}
    for m in sink.messages():
        key = (MESSAGE_ID.search(m["data"]).group(1), m["rcpt_tos"][0])
        generations.setdefault(key, []).append(sum(m["connected_at"] >= t for t in starts))
    assert all(len(g) == len(set(g)) for g in generations.values())
    per_kill = [len(f) for f in in_flight]
    # Of those, at most `on_the_wire` were between "." and the relay reading their 250 (an upper bound:
    # a connection may also have been idle after it); the rest waited for their outcome's commit.
    print(f"\n{KILLS} x SIGKILL, {N} messages, {CONNECTIONS} connections: duplicates per kill {per_kill}"
          f" (mean {sum(per_kill) / KILLS:.1f}), total {extra}; of them at most {on_the_wire} after '.'"
          f" with the 250 unread")
    assert max(per_kill) <= IN_FLIGHT_BOUND


def test_redis_flushall_mid_run_loses_nothing(services, settings, account, domain, db, sink, tmp_path):
    expected = enqueue(services, account, domain, N // 2, "flush")
    relay = start_relay(settings, sink, tmp_path, "relay", f"flush-{uuid.uuid4().hex[:6]}")
    try:
        wait_until(lambda: sink.stats()["messages"] >= N // 8, timeout=40, interval=0.02)
        flush_redis(settings.redis_url)  # the doorbell and everything else in Redis
        assert sink.stats()["messages"] < N // 2
        more = enqueue(services, account, domain, N // 2, "flush2")  # rings into a flushed Redis too
        flush_redis(settings.redis_url)
        wait_until(lambda: (expected | more) <= set(received(sink, domain)), timeout=40, interval=0.2)
        wait_until(lambda: delivered_rows(db, domain) == N, timeout=20)
    finally:
        relay.stop()
    seen = received(sink, domain)
    assert set(seen) == expected | more
    assert all(n == 1 for n in seen.values())  # no crash, no duplicate
