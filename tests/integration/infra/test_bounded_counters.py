"""BoundedCounters on real Redis: an atomic check-and-add over several counters, under concurrency."""

from __future__ import annotations

import threading

import redis as redis_lib

from envoi.infra.redis import BoundedCounters


def test_adds_to_all_or_none_and_gives_back(redis_url):
    conn = redis_lib.Redis.from_url(redis_url)
    conn.delete("t:bc:day", "t:bc:month")
    counters = BoundedCounters(conn)
    limits = [("t:bc:day", 5, 100), ("t:bc:month", 8, 1000)]
    assert counters.add_within(limits, 3) is None
    assert counters.add_within(limits, 3) == 0
    assert (counters.get("t:bc:day"), counters.get("t:bc:month")) == (3, 3)
    assert counters.add_within([("t:bc:day", None, 100), ("t:bc:month", 8, 1000)], 6) == 1
    assert counters.add_within(limits, 2) is None
    assert 0 < conn.ttl("t:bc:day") <= 100 and 100 < conn.ttl("t:bc:month") <= 1000
    counters.subtract(["t:bc:day", "t:bc:month"], 2)
    assert (counters.get("t:bc:day"), counters.get("t:bc:month")) == (3, 3)


def test_concurrent_adds_never_pass_the_limit(redis_url):
    conn = redis_lib.Redis.from_url(redis_url)
    conn.delete("t:bc:race")
    counters = BoundedCounters(conn)
    admitted = []

    def worker():
        for _ in range(20):
            if counters.add_within([("t:bc:race", 50, 100)], 1) is None:
                admitted.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 50 and counters.get("t:bc:race") == 50
