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
