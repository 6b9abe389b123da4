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
