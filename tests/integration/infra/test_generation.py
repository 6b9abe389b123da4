"""The revocation generation: a bump in one process is what every other process reads on its very next
current(), although reading it no longer asks Redis each time (a watch on the counter's channel)."""

from __future__ import annotations

import uuid

from envoi.infra import redis as redis_infra


def pair(redis_url):
    key = f"test:generation:{uuid.uuid4().hex}"
    return (redis_infra.Generation(redis_infra.client(redis_url), key),
            redis_infra.Generation(redis_infra.client(redis_url), key), key)


def counted_gets(conn):
    """Counts the GETs this client sends."""
    calls = []
    original = conn.get
    conn.get = lambda *a, **kw: (calls.append(1), original(*a, **kw))[1]
    return calls


def test_a_bump_elsewhere_is_read_at_once_and_unchanged_reads_cost_no_round_trip(redis_url):
    reader, bumper, key = pair(redis_url)
    try:
        assert reader.current() == 0
        gets = counted_gets(reader.conn)
        for _ in range(100):
            assert reader.current() == 0
        assert gets == []  # within RECHECK, nothing changed: no GET
        for n in range(1, 21):  # each bump is seen by the very next read, never later
            bumper.bump()
            assert reader.current() == n
        assert len(gets) == 20
        assert int(reader.conn.get(key)) == 20
    finally:
        reader.conn.delete(key)


def test_a_lost_watch_falls_back_to_reading_the_counter_and_is_made_again(redis_url):
    reader, bumper, key = pair(redis_url)
    try:
        assert reader.current() == 0
        host, port = reader._watcher._sock.getsockname()[:2]
        reader.conn.client_kill(f"{host}:{port}")  # as a Redis restart or a proxy's idle timeout would
        bumper.bump()  # while the watch is gone
        assert reader.current() == 1  # the dead watch is noticed and the counter read
        reader._retry_at = 0.0
        assert reader.current() == 1 and reader._watcher is not None  # watching again
        bumper.bump()
        assert reader.current() == 2
    finally:
        reader.conn.delete(key)


def test_a_bump_without_a_message_is_seen_within_recheck(redis_url, monkeypatch):
    """A process of a version that only INCRs (during an upgrade): its bump is read within RECHECK."""
    reader, _, key = pair(redis_url)
    try:
        assert reader.current() == 0
        reader.conn.incr(key)
        assert reader.current() == 0  # not yet: no message came
        reader._read_at -= redis_infra.Generation.RECHECK
        assert reader.current() == 1
    finally:
        reader.conn.delete(key)


def test_other_dbs_and_keys_do_not_wake_it(redis_url):
    reader, _, key = pair(redis_url)
    other = redis_infra.Generation(redis_infra.client(redis_url), f"{key}:other")
    try:
        assert reader.current() == 0
        gets = counted_gets(reader.conn)
        other.bump()
        assert reader.current() == 0 and gets == []
    finally:
        reader.conn.delete(key, f"{key}:other")


def test_without_redis_current_is_none():
    down = redis_infra.Generation(redis_infra.client("redis://127.0.0.1:1/0"), "test:generation:down")
    assert down.current() is None
    assert down.current() is None  # and again, through the plain read while the watch waits to retry

