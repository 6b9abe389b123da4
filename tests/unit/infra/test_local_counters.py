"""In-process fixed-window counters: counts per key, a new window after the last runs out."""

import time

from envoi.infra.local_counters import LocalCounters


def test_counts_per_key_and_restart_after_the_window():
    counters = LocalCounters(window=0.2)
    assert [counters.incr("a") for _ in range(3)] == [1, 2, 3]
    assert (counters.get("a"), counters.get("b")) == (3, 0)
    time.sleep(0.25)
    assert counters.get("a") == 0 and counters.incr("a") == 1
    counters.forget("a")
    assert counters.get("a") == 0
    counters.incr("b")
    counters.forget()
    assert counters.get("b") == 0


def test_expired_counts_are_dropped_once_the_table_is_full(monkeypatch):
    import envoi.infra.local_counters as module

    now = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    counters = module.LocalCounters(window=60, max_keys=3)
    for key in ("a", "b", "c"):
        counters.incr(key)
    now[0] += 61  # every window has run out
    counters.incr("d")
    assert set(counters._counts) == {"d"} and counters.get("a") == 0


def test_add_within_adds_to_every_counter_or_to_none():
    counters = LocalCounters(window=60)
    assert counters.add_within([("day", 5), ("month", 8)], 3) is None
    assert counters.add_within([("day", 5), ("month", 8)], 3) == 0  # 6 > 5: the day refuses
    assert (counters.get("day"), counters.get("month")) == (3, 3)  # nothing added
    assert counters.add_within([("day", None), ("month", 8)], 6) == 1  # the month refuses
    assert counters.add_within([("day", 5), ("month", 8)], 2) is None
    assert (counters.get("day"), counters.get("month")) == (5, 5)
    counters.subtract("day", 2)
    assert counters.get("day") == 3
    counters.subtract("day", 10)
    assert counters.get("day") == 0  # never below zero
