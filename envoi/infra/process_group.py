"""A command's process group (`envoi smtp|worker|webhooks dispatch --processes N`, gunicorn's workers):
its children started, signalled, stopped, and their readiness seen by the parent.

Readiness crosses processes as files: a child whose Health is started writes `<pid>` in the directory
the group's parent exported as ENVOI_GROUP_READY_DIR, and removes it when it stops. The parent's /readyz
is then false while a child is dead, still starting or stopping (a dead one cannot remove its file, so
the parent also checks that each child is alive). No prometheus-client import at load: a group's
commands import this before choosing their metrics directory (envoi.infra.metrics_dir)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable

VARIABLE = "ENVOI_GROUP_READY_DIR"


def mark(ready: bool) -> None:
    """This process (a child of a group) is ready, or no longer: a no-op outside a group."""
    folder = os.environ.get(VARIABLE)
    if not folder or not os.path.isdir(folder):
        return
    path = os.path.join(folder, str(os.getpid()))
    if ready:
        with open(path, "w"):
            pass
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def check_children(folder: str, live: Iterable[int], expected: int) -> None:
    """Raise unless `expected` children are alive and each has said it is ready (a health Check's shape)."""
    live = sorted(live)
    not_ready = [pid for pid in live if not os.path.exists(os.path.join(folder, str(pid)))]
    if len(live) < expected:
        raise RuntimeError(f"{expected - len(live)} of {expected} child processes not running")
    if not_ready:
        raise RuntimeError(f"child process(es) {', '.join(map(str, not_ready))} not ready")


class ReadyDir:
    """The directory a group's children write their readiness in, exported before they start."""

    def __init__(self):
        self.path = tempfile.mkdtemp(prefix="envoi-ready-")
        os.environ[VARIABLE] = self.path

    def forget(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.path, str(pid)))

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class Group:
    """Children of one command, forked (`fork(run)`) or started (`start(argv)`), all of the same kind."""

    def __init__(self):
        self._ready: ReadyDir | None = None  # made with the first child (a child of a group makes none)
        self.popens: dict[int, subprocess.Popen] = {}
        self.forked: set[int] = set()  # forked children not yet reaped
        self.expected = 0

    @property
    def ready(self) -> ReadyDir:
        if self._ready is None:
            self._ready = ReadyDir()
        return self._ready

    def fork(self, run: Callable[[], int]) -> int:
        """A child running run() (its exit code) in a fork: call before any thread or pool exists."""
        self.ready  # noqa: B018 (exported before the fork)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = run()
            finally:
                os._exit(code)
        self.forked.add(pid)
        self.expected += 1
        return pid

    def start(self, argv: list[str]) -> subprocess.Popen:
        self.ready  # noqa: B018 (exported before the child starts)
        child = subprocess.Popen(argv)
        self.popens[child.pid] = child
        self.expected += 1
        return child

    def live(self) -> list[int]:
        return [*self.forked, *(pid for pid, child in self.popens.items() if child.poll() is None)]

    def check(self) -> None:
        """A health Check: every child alive and ready."""
        check_children(self.ready.path, self.live(), self.expected)

    def signal(self, signum: int) -> None:
        for pid in [*self.forked, *(pid for pid, child in self.popens.items() if child.returncode is None)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def forward_signals(self, *signums: int, mapping: dict[int, int] | None = None) -> None:
        """This process's handler for `signums`: pass each on to every child (as mapping says, else as is)."""
        mapping = mapping or {}
        for signum in signums:
            signal.signal(signum, lambda got, _frame: self.signal(mapping.get(got, got)))

    def wait_forked(self) -> bool:
        """Reap the forked children as they exit, until none is left; True if any failed (SIGTERM is not a
        failure). A child's exit is seen at once (its readiness goes with it)."""
        failed = False
        while self.forked:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid in self.forked:
                self.forked.discard(pid)
                self._gone(pid)
                failed |= os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM)
        return failed

    def stop(self, timeout: float) -> None:
        """SIGTERM the started children; one still there after `timeout` seconds is killed."""
        for child in self.popens.values():
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + timeout
        for pid, child in self.popens.items():
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            self._gone(pid)

    def _gone(self, pid: int) -> None:
        from envoi.infra.metrics import forget_process  # prometheus-client: imported after metrics_dir.use()

        forget_process(pid)
        self.ready.forget(pid)

    def close(self) -> None:
        if self._ready is not None:
            self._ready.close()
