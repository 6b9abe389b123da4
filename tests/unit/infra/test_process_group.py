"""envoi.infra.process_group: a group's readiness follows its children (alive and marked ready); a child
that dies while the group is not stopping is replaced, with a backoff."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from envoi.infra import process_group


def problem(group) -> str | None:
    try:
        group.check()
    except RuntimeError as ex:
        return str(ex)
    return None


def until(group, wanted: str | None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (found := problem(group)) != wanted:
        assert time.monotonic() < deadline, found
        time.sleep(0.02)


def test_a_group_is_ready_only_while_every_child_lives_and_has_said_it_is_ready(monkeypatch):
    monkeypatch.delenv(process_group.VARIABLE, raising=False)
    group = process_group.Group(restart=False)  # --burst: a dead child stays dead

    def child() -> int:
        time.sleep(0.3)  # starting: not ready yet
        process_group.mark(True)
        signal.sigwait({signal.SIGTERM})
        process_group.mark(False)
        return 0

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the children wait for it (inherited mask)
    try:
        pids = [group.fork(child) for _ in range(2)]
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    reaper = threading.Thread(target=lambda: failed.append(group.wait_forked()), daemon=True)
    failed: list[bool] = []
    reaper.start()
    try:
        assert "not ready" in problem(group)
        until(group, None)  # both marked
        os.kill(pids[0], signal.SIGKILL)  # dead: cannot unmark itself
        until(group, "1 of 2 child processes not running")
    finally:
        group.signal(signal.SIGTERM)
        reaper.join(10)
        group.close()
    assert failed == [True]  # the SIGKILLed one; the other stopped cleanly
    assert not os.path.exists(os.environ[process_group.VARIABLE])  # removed with the group


def test_mark_outside_a_group_does_nothing(monkeypatch, tmp_path):
    monkeypatch.delenv(process_group.VARIABLE, raising=False)
    process_group.mark(True)
    process_group.mark(False)
    monkeypatch.setenv(process_group.VARIABLE, str(tmp_path))
    process_group.mark(True)
    assert os.listdir(tmp_path) == [str(os.getpid())]
    process_group.mark(False)
    assert os.listdir(tmp_path) == []


def ready_child() -> int:
    process_group.mark(True)
    signal.sigwait({signal.SIGTERM})
    process_group.mark(False)
    return 0


def test_a_forked_child_killed_is_replaced_and_the_group_is_ready_again(monkeypatch, caplog):
    monkeypatch.delenv(process_group.VARIABLE, raising=False)
    group = process_group.Group("test")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        pids = [group.fork(ready_child) for _ in range(2)]
        failed: list[bool] = []
        reaper = threading.Thread(target=lambda: failed.append(group.wait_forked()), daemon=True)
        reaper.start()  # its forks inherit the blocked SIGTERM too
        until(group, None)
        assert group.status() == (2, 2, 0)
        with caplog.at_level(logging.ERROR, logger="envoi.process_group"):
            os.kill(pids[0], signal.SIGKILL)
            until(group, "1 of 2 child processes not running")
            assert group.status() == (1, 2, 0)
            until(group, None)  # the replacement, 0.5 s later, has said it is ready
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        group.signal(signal.SIGTERM)
        reaper.join(10)
        group.close()
    assert group.status()[2] == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"test: child 0 (pid {pids[0]}) died (signal SIGKILL); replacing it in 0.5 s"]
    assert failed == [False]  # the group stopped cleanly; the killed one was replaced, not a failure


def test_a_child_crashing_at_start_is_replaced_with_a_doubling_delay(monkeypatch, caplog):
    monkeypatch.delenv(process_group.VARIABLE, raising=False)
    group = process_group.Group("test")
    group.fork(lambda: 3)
    reaper = threading.Thread(target=group.wait_forked, daemon=True)
    with caplog.at_level(logging.ERROR, logger="envoi.process_group"):
        reaper.start()
        time.sleep(2.0)  # deaths at ~0, ~0.5, ~1.5 s: two replacements, not dozens
        group.mark_stopping()
        reaper.join(10)
    group.close()
    assert not reaper.is_alive()
    assert 1 <= group.restarts <= 3, group.restarts
    delays = [r.getMessage().rsplit(" in ", 1)[1] for r in caplog.records]
    assert delays == ["0.5 s", "1.0 s", "2.0 s", "4.0 s"][:len(delays)] and len(delays) >= 2, delays
    assert all("(exit code 3)" in r.getMessage() for r in caplog.records)


def test_a_started_child_killed_is_replaced_by_the_supervisor_until_the_group_stops(monkeypatch):
    monkeypatch.delenv(process_group.VARIABLE, raising=False)
    group = process_group.Group("test")
    code = "import time; from envoi.infra import process_group; process_group.mark(True); time.sleep(60)"
    first = group.start([sys.executable, "-c", code])
    group.supervise()
    try:
        until(group, None, timeout=30)
        first.kill()
        until(group, "1 of 1 child processes not running")
        until(group, None, timeout=30)
        assert group.live() != [first.pid] and group.status() == (1, 1, 1)
    finally:
        group.stop(timeout=5)
        group.close()
    time.sleep(0.5)  # the supervisor does not replace a child the group stopped
    assert group.live() == [] and group.restarts == 1


def test_a_child_dying_as_the_group_stops_is_not_replaced(monkeypatch):
    monkeypatch.delenv(process_group.VARIABLE, raising=False)
    group = process_group.Group("test")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        pids = [group.fork(ready_child) for _ in range(2)]
        reaper = threading.Thread(target=group.wait_forked, daemon=True)
        reaper.start()
        until(group, None)
        os.kill(pids[0], signal.SIGKILL)  # its replacement would be due 0.5 s later
        group.signal(signal.SIGTERM)
        reaper.join(10)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        group.close()
    assert not reaper.is_alive() and group.restarts == 0 and group.live() == []
