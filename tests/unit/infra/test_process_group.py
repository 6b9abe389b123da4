"""envoi.infra.process_group: a group's readiness follows its children (alive and marked ready)."""

from __future__ import annotations

import os
import signal
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
    group = process_group.Group()

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
