"""The relay's doorbell: a ring reaches Redis without the ringer waiting, and rings coalesce."""

from __future__ import annotations

import time
import uuid

from envoi.infra import redis as redis_infra


def test_rings_reach_the_waiter_and_coalesce(redis_url):
    conn = redis_infra.client(redis_url)
    key = f"test:doorbell:{uuid.uuid4().hex}"
    bell = redis_infra.Doorbell(conn, key)
    try:
        assert bell.wait(0.1) is False  # nothing rung yet
        started = time.monotonic()
        for _ in range(50):
            bell.ring()
        assert time.monotonic() - started < 0.05  # the ringer thread talks to Redis, not the caller
        assert bell.wait(2) is True
        time.sleep(0.2)  # let any ring still on its way land
        assert conn.llen(key) <= 1  # fifty rings leave at most one pending
        bell.wait(0.1)
        assert bell.wait(0.1) is False
        bell.ring()  # and the thread keeps serving later rings
        assert bell.wait(2) is True
    finally:
        conn.delete(key)


def test_ringing_never_waits_on_a_stuck_redis():
    """A Redis that accepts the connection but never answers: ring() still returns at once."""
    import socket

    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(16)  # never accepted, never answered: the kernel completes the handshake anyway
    try:
        conn = redis_infra.redis.Redis(host="127.0.0.1", port=stuck.getsockname()[1], socket_timeout=0.5,
                                       socket_connect_timeout=0.5)
        bell = redis_infra.Doorbell(conn, "test:doorbell:stuck")
        started = time.monotonic()
        for _ in range(20):
            bell.ring()
        assert time.monotonic() - started < 0.2  # each ring_now() blocks for at least the 0.5 s timeout
    finally:
        stuck.close()


def test_a_ring_rides_with_the_live_stream_publish_of_the_same_commit(redis_url):
    """An intake commit publishes its events and then rings: the ring goes in the publish's own round trip
    (the doorbell's thread is never started), reaches the relay, and the events reach their stream."""
    import threading

    from envoi.events.service import NewEvent
    from envoi.events.stream import LiveStream

    conn = redis_infra.client(redis_url)
    key = f"test:doorbell:{uuid.uuid4().hex}"
    stream = LiveStream(conn, f"t{uuid.uuid4().hex[:8]}")
    bell = redis_infra.Doorbell(conn, key, carrier=stream.carry_ring)
    gate, publish_now = threading.Event(), stream.publish_now
    stream.publish_now = lambda events, rings=(): gate.wait(5) and publish_now(events, rings)

    def event(n: int) -> NewEvent:
        return NewEvent(7, 1, None, {"event": "accepted", "id": f"e{n}", "timestamp": 1.0})

    try:
        stream.publish([event(0)])  # the publisher takes it and waits at the gate
        wait_until_empty = time.monotonic() + 2
        while stream._outbox and time.monotonic() < wait_until_empty:
            time.sleep(0.01)
        stream.publish([event(1)])  # waits for the publisher
        bell.ring()
        bell.ring()  # two commits' rings, one ring
        assert bell._ringer is None  # carried: the doorbell's thread was not needed
        assert conn.llen(key) == 0
        gate.set()
        assert bell.wait(2) is True
        assert conn.xlen(stream.key(7)) == 2
        assert bell.wait(0.1) is False  # one ring pending at most
        # Nothing waiting to be published: the doorbell's own thread rings.
        bell.ring()
        assert bell.wait(2) is True
        assert bell._ringer is not None
    finally:
        conn.delete(key, stream.key(7))
