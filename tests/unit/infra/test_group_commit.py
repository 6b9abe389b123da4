"""Group commit: concurrent callers share batches, each gets its own result, a bad item fails alone."""

import threading
import time

import pytest

from envoi.infra.group_commit import CommitTimeout, GroupCommit


def run_threads(n, target):
    results, errors = [None] * n, [None] * n

    def call(i):
        try:
            results[i] = target(i)
        except Exception as ex:  # collected and asserted by the test
            errors[i] = ex

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results, errors


def test_concurrent_items_share_batches_and_get_their_own_results():
    written = []

    def write(items):
        time.sleep(0.01)  # a commit takes a while: callers arriving meanwhile wait for the next batch
        written.append(list(items))
        return [i * 10 for i in items]

    group = GroupCommit(write, max_batch=16)
    results, errors = run_threads(40, group.submit)
    assert errors == [None] * 40
    assert results == [i * 10 for i in range(40)]
    assert sorted(i for batch in written for i in batch) == list(range(40))  # each written exactly once
    assert len(written) < 40 and max(len(b) for b in written) > 1
    assert max(len(b) for b in written) <= 16


def test_a_lone_caller_writes_at_once():
    group = GroupCommit(lambda items: [x + 1 for x in items])
    assert group.submit(1) == 2
    assert (group.batches, group.items) == (1, 1)


def test_a_failing_item_fails_only_its_own_caller():
    gate = threading.Event()

    def write(items):
        gate.wait(1)
        if 13 in items:
            raise ValueError("bad item 13")
        return items

    group = GroupCommit(write, isolate=lambda error: isinstance(error, ValueError))
    holder = threading.Thread(target=group.submit, args=(-1,))
    holder.start()  # leads the first batch and holds it until the others queue behind it
    time.sleep(0.05)
    results_errors = {}

    def submit(i):
        try:
            results_errors[i] = group.submit(i)
        except ValueError as ex:
            results_errors[i] = ex

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(10, 20)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    gate.set()
    for t in threads + [holder]:
        t.join(10)
    assert isinstance(results_errors.pop(13), ValueError)
    assert results_errors == {i: i for i in range(10, 20) if i != 13}


def test_an_error_for_everyone_reaches_everyone_and_is_not_retried():
    calls = []

    def write(items):
        calls.append(len(items))
        time.sleep(0.01)
        raise ConnectionError("database away")  # maybe mid-commit: retrying could store twice

    group = GroupCommit(write, isolate=lambda error: isinstance(error, ValueError))
    _, errors = run_threads(8, group.submit)
    assert all(isinstance(e, ConnectionError) for e in errors)
    assert sum(calls) == 8  # each item written once, none retried alone
    with pytest.raises(ConnectionError):
        group.submit(1)  # and the group is usable (no leader left stuck) afterwards


def test_under_load_the_leader_waits_for_company_and_alone_it_does_not():
    written = []

    def write(items):
        written.append(list(items))
        return items

    group = GroupCommit(write, max_batch=64, delay=0.05)
    started = time.monotonic()
    assert group.submit(0) == 0  # alone (the last batch had no company): no wait
    assert time.monotonic() - started < 0.04
    group._last_batch = 2  # as after a batch that had company

    def late(i):  # callers arriving within the delay join the leader's batch
        time.sleep(0 if i == 0 else 0.01)
        return group.submit(i)

    results, errors = run_threads(8, late)
    assert errors == [None] * 8 and results == list(range(8))
    assert len(written) == 2 and sorted(written[1]) == list(range(8))  # the leader waited: one batch


def test_without_a_delay_late_callers_make_their_own_batches():
    written = []
    group = GroupCommit(lambda items: written.append(list(items)) or items, delay=0.0)
    group._last_batch = 2

    def late(i):
        time.sleep(0 if i == 0 else 0.01)
        return group.submit(i)

    run_threads(8, late)
    assert len(written) > 1


def test_a_caller_queued_behind_a_stuck_writer_gives_up_unwritten_and_the_group_goes_on():
    written, release = [], threading.Event()

    def write(items):
        if "stuck" in items:
            release.wait(10)  # a database that does not answer
        written.append(list(items))
        return list(items)

    group = GroupCommit(write, timeout=0.3)
    leader = threading.Thread(target=group.submit, args=("stuck",))
    leader.start()
    while not group._busy:
        time.sleep(0.001)
    started = time.monotonic()
    with pytest.raises(CommitTimeout, match="not written"):
        group.submit("queued")
    assert time.monotonic() - started < 2
    release.set()
    leader.join(5)
    assert group.submit("later") == "later"  # the lead was not lost with the caller that gave up
    assert written == [["stuck"], ["later"]]  # the one that gave up was never written
