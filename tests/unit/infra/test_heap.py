"""envoi.infra.heap: what is alive at start-up is frozen out of the cyclic collector, later objects are not."""

from __future__ import annotations

import gc

import pytest

from envoi.infra import heap


@pytest.fixture
def restored_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class _Node:
    def __init__(self):
        self.me = self  # a cycle: only the cyclic collector frees it


def test_settle_heap_freezes_what_lives_collects_the_garbage_and_raises_the_young_threshold(restored_gc):
    gc.unfreeze()
    started_with = _Node()
    _Node()  # garbage in a cycle at start-up: collected, not frozen
    old, older = gc.get_threshold()[1:]

    heap.settle_heap()

    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, old, older)
    tracked = gc.get_objects()
    assert not any(o is started_with for o in tracked)  # no collection walks it any more
    assert not any(isinstance(o, _Node) for o in tracked)
    later = _Node()
    assert any(o is later for o in gc.get_objects())  # what comes after is collected as usual

