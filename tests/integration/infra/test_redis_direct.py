"""envoi.infra.redis.Direct: a background thread's own connection, commands sent and read on it directly."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from envoi.infra import redis as redis_infra


def test_commands_are_answered_in_order_on_one_connection(redis_url):
    conn = redis_infra.client(redis_url)
    direct = redis_infra.Direct(conn)
    key = f"test:direct:{uuid.uuid4().hex}"
    try:
        assert direct.execute(("LPUSH", key, 1), ("LPUSH", key, 2), ("LTRIM", key, 0, 0)) == [1, 2, b"OK"]
        first = direct._conn
        assert direct.execute(("LRANGE", key, 0, -1)) == [[b"2"]]
        assert direct._conn is first  # kept: no connection per command
        assert conn.lrange(key, 0, -1) == [b"2"]
    finally:
        conn.delete(key)


def test_a_command_redis_does_not_answer_fails_at_the_clients_timeout_and_the_next_one_reconnects(redis_url):
    # The socket blocks (no poll before each recv): the kernel's receive timeout stands in for the client's.
    conn = redis_infra.client(redis_url, socket_timeout=0.5)
    direct = redis_infra.Direct(conn)
    started = time.monotonic()
    with pytest.raises(redis_infra.RedisError):
        direct.execute(("BLPOP", f"test:direct:never:{uuid.uuid4().hex}", 0))  # Redis answers only when pushed
    assert 0.4 < time.monotonic() - started < 2.0
    assert direct._conn is None  # dropped: a late reply must not be read as the next command's
    assert direct.execute(("PING",)) == [b"PONG"]


def test_a_forked_child_connects_on_its_own(redis_url):
    direct = redis_infra.Direct(redis_infra.client(redis_url))
    assert direct.execute(("PING",)) == [b"PONG"]
    parents = direct._conn
    pid = os.fork()
    if pid == 0:  # the child: a connection of its own, the parent's left alone
        ok = direct.execute(("PING",)) == [b"PONG"] and direct._conn is not parents
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert direct.execute(("PING",)) == [b"PONG"] and direct._conn is parents
