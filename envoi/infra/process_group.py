"""A command's process group (`envoi smtp|worker|webhooks dispatch --processes N`, gunicorn's workers):
its children started, signalled, stopped, and their readiness seen by the parent.

Readiness crosses processes as files: a child whose Health is started writes `<pid>` in the directory
the group's parent exported as ENVOI_GROUP_READY_DIR, and removes it when it stops. The parent's /readyz
is then false while a child is dead, still starting or stopping (a dead one cannot remove its file, so
the parent also checks that each child is alive). A child that dies unexpectedly is replaced, with a
backoff; status() gives the parent's metrics (envoi.infra.metrics.GroupCollector). No prometheus-client import at load: a group's
commands import this before choosing their metrics directory (envoi.infra.metrics_dir)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable

VARIABLE = "ENVOI_GROUP_READY_DIR"
# A dead child is replaced after RESTART_FIRST seconds, twice as long after each death up to RESTART_MAX,
# so one crashing at start does not spin; one that had run RESTART_HEALTHY seconds starts over at FIRST.
RESTART_FIRST, RESTART_MAX, RESTART_HEALTHY = 0.5, 30.0, 60.0
STOPPING = (signal.SIGTERM, signal.SIGINT, signal.SIGKILL)  # sent to the children: the group is stopping

log = logging.getLogger("envoi.process_group")


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


def count_ready(folder: str, live: Iterable[int]) -> int:
    """How many of the `live` children have said they are ready."""
    return sum(os.path.exists(os.path.join(folder, str(pid))) for pid in live)


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


class _Child:
    """One place in the group: the process now filling it, and when a dead one is to be replaced."""

    def __init__(self, index: int, run: Callable[[], int] | None = None, argv: list[str] | None = None):
        self.index = index
        self.run, self.argv = run, argv
        self.pid: int | None = None  # a forked child not yet reaped
        self.popen: subprocess.Popen | None = None
        self.started = 0.0
        self.delay = RESTART_FIRST  # before the next replacement
        self.due: float | None = None  # when the dead one is replaced

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.pid is not None


class Group:
    """Children of one command, forked (`fork(run)`) or started (`start(argv)`), all of the same kind.
    A child that dies while the group is not stopping is replaced (after RESTART_FIRST seconds, doubling
    up to RESTART_MAX while replacements keep dying young), as gunicorn's master does: forked ones by
    wait_forked(), started ones by the thread supervise() starts. `restart=False` (--burst: children
    end on their own) leaves the dead ones dead."""

    def __init__(self, name: str = "", *, restart: bool = True):
        self.name = name
        self.restart = restart
        self._ready: ReadyDir | None = None  # made with the first child (a child of a group makes none)
        self.children: list[_Child] = []
        self.stopping = False
        self.restarts = 0
        self.fork_lock = threading.Lock()  # held by the metrics thread while it answers: no fork in between
        self._lock = threading.RLock()  # started children: replacing one vs stopping the group
        self._forwarded: set[int] = set()

    @property
    def expected(self) -> int:
        return len(self.children)

    @property
    def ready(self) -> ReadyDir:
        if self._ready is None:
            self._ready = ReadyDir()
        return self._ready

    def fork(self, run: Callable[[], int]) -> int:
        """A child running run() (its exit code) in a fork: call before any thread or pool exists."""
        child = _Child(len(self.children), run=run)
        self.children.append(child)
        return self._fork(child)

    def _fork(self, child: _Child, mask: set[int] | None = None) -> int:
        self.ready  # noqa: B018 (exported before the fork)
        with self.fork_lock:
            pid = os.fork()
        if pid == 0:
            for signum in self._forwarded:  # the child's own handlers come with its server
                signal.signal(signum, signal.SIG_DFL)
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            code = 1
            try:
                code = child.run()
            finally:
                os._exit(code)
        child.pid, child.started, child.due = pid, time.monotonic(), None
        return pid

    def start(self, argv: list[str]) -> subprocess.Popen:
        child = _Child(len(self.children), argv=argv)
        self.children.append(child)
        return self._start(child)

    def _start(self, child: _Child) -> subprocess.Popen:
        self.ready  # noqa: B018 (exported before the child starts)
        child.popen = subprocess.Popen(child.argv)
        child.pid, child.started, child.due = child.popen.pid, time.monotonic(), None
        return child.popen

    def live(self) -> list[int]:
        return [child.pid for child in self.children if child.pid is not None and child.alive()]

    def check(self) -> None:
        """A health Check: every child alive and ready."""
        check_children(self.ready.path, self.live(), self.expected)

    def status(self) -> tuple[int, int, int]:
        """(children alive and ready, children expected, replacements started): the group's metrics."""
        return count_ready(self.ready.path, self.live()), self.expected, self.restarts

    def mark_stopping(self) -> None:
        """The group is stopping: a child that exits now is not replaced."""
        with self._lock:
            self.stopping = True

    def signal(self, signum: int) -> None:
        if signum in STOPPING:
            self.mark_stopping()
        for pid in self.live():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def forward_signals(self, *signums: int, mapping: dict[int, int] | None = None) -> None:
        """This process's handler for `signums`: pass each on to every child (as mapping says, else as is)."""
        mapping = mapping or {}
        for signum in signums:
            self._forwarded.add(signum)
            signal.signal(signum, lambda got, _frame: self.signal(mapping.get(got, got)))

    def wait_forked(self) -> bool:
        """Reap the forked children as they exit and replace the ones that died while the group was not
        stopping, until none is left; True if any failed while stopping (SIGTERM is not a failure). A
        child's exit is seen within 50 ms (its readiness goes with it)."""
        failed = False
        while True:
            pending = [c for c in self.children if c.due is not None and not self.stopping]
            if not pending and not any(c.pid is not None for c in self.children):
                return failed
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # none running: only replacements to wait for
                pid, status = 0, 0
            if pid == 0:
                now = time.monotonic()
                for child in pending:
                    if child.due <= now:
                        self._replace_forked(child)
                time.sleep(0.05)
                continue
            child = next((c for c in self.children if c.pid == pid), None)
            if child is None:
                continue
            child.pid = None
            self._gone(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping or not self.restart:
                failed |= code not in (0, -signal.SIGTERM)
            else:
                self._died(child, pid, code)

    def _replace_forked(self, child: _Child) -> None:
        # The forwarded signals wait until the fork is done: a SIGTERM in between would otherwise reach
        # every child but the new one, which the group would then wait for forever.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, self._forwarded)
        try:
            if not self.stopping:
                self.restarts += 1
                self._fork(child, mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def supervise(self) -> None:
        """Replace the started children that die while the group is not stopping, from a thread."""
        if self.restart and self.children:
            threading.Thread(target=self._supervise, name="process-group", daemon=True).start()

    def _supervise(self) -> None:
        while not self.stopping:
            time.sleep(0.1)
            with self._lock:
                now = time.monotonic()
                for child in self.children:
                    if self.stopping:
                        return
                    if child.due is None and child.popen is not None and (code := child.popen.poll()) is not None:
                        self._gone(child.popen.pid)
                        self._died(child, child.popen.pid, code)
                    elif child.due is not None and child.due <= now:
                        self.restarts += 1
                        self._start(child)

    def _died(self, child: _Child, pid: int, code: int) -> None:
        now = time.monotonic()
        if now - child.started >= RESTART_HEALTHY:  # it had run well: a new crash starts a new backoff
            child.delay = RESTART_FIRST
        child.due = now + child.delay
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        log.error("%s: child %d (pid %d) died (%s); replacing it in %.1f s", self.name or "process group",
                  child.index, pid, how, child.delay)
        child.delay = min(child.delay * 2, RESTART_MAX)

    def stop(self, timeout: float) -> None:
        """SIGTERM the started children; one still there after `timeout` seconds is killed."""
        self.mark_stopping()
        with self._lock:
            started = [child.popen for child in self.children if child.popen is not None]
        for popen in started:
            if popen.poll() is None:
                popen.terminate()
        deadline = time.monotonic() + timeout
        for popen in started:
            try:
                popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
            self._gone(popen.pid)

    def _gone(self, pid: int) -> None:
        from envoi.infra.metrics import forget_process  # prometheus-client: imported after metrics_dir.use()

        forget_process(pid)
        self.ready.forget(pid)

    def close(self) -> None:
        if self._ready is not None:
            self._ready.close()
