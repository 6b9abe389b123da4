"""Every long-running process settles its heap once started (envoi.infra.heap): its start-up objects are
frozen out of the cyclic collector. Seen from inside each real process: a thread started in it (and in
every process it forks) writes its pid once gc.get_freeze_count() is above zero."""

from __future__ import annotations

import os
import sys
import time

import pytest

from tests.support.processes import Proc, free_port, process_env

pytestmark = pytest.mark.e2e

# `python -c WATCH OUT_DIR <envoi args>`: the envoi command, with the watcher in this process and its forks
WATCH = """
import gc, os, sys, threading, time
out = sys.argv[1]
def watch():
    def run():
        while not gc.get_freeze_count():
            time.sleep(0.05)
        path = os.path.join(out, str(os.getpid()))
        with open(path + ".tmp", "w") as f:
            f.write(str(gc.get_freeze_count()))
        os.replace(path + ".tmp", path)
    threading.Thread(target=run, daemon=True).start()
watch()
os.register_at_fork(after_in_child=watch)
from envoi.cli import main
main(args=sys.argv[2:], prog_name="envoi")
"""

# the command, and whether the settled processes are its forked children (a group) or itself
COMMANDS = {
    "api": (["api", "--workers", "2"], True),
    "tracking": (["tracking", "--workers", "1"], True),
    "relay": (["relay", "--metrics-port", "0"], False),
    "smtp": (["smtp", "--bind", "127.0.0.1", "--smtps-port", "0"], False),
    "smtp-processes": (["smtp", "--bind", "127.0.0.1", "--smtps-port", "0", "--processes", "2"], True),
    "inbound": (["inbound", "--bind", "127.0.0.1"], False),
    "worker": (["worker", "--processes", "1"], False),
    "scheduler": (["scheduler"], False),
    "webhooks-dispatch": (["webhooks", "dispatch", "--processes", "1", "--metrics-port", "0"], False),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_started_process_has_frozen_its_start_up_heap(tmp_path, settings, name):
    args, forked = COMMANDS[name]
    port = free_port()
    if name in ("api", "tracking"):
        args = [*args, "--bind", f"127.0.0.1:{port}"]
    elif name.startswith("smtp"):
        args = [*args, "--port", str(port), "--var", str(tmp_path)]
    elif name == "inbound":
        args = [*args, "--port", str(port)]
    out = tmp_path / "frozen"
    out.mkdir()
    proc = Proc(name, [sys.executable, "-c", WATCH, str(out), *args], process_env(settings), tmp_path)
    try:
        deadline = time.monotonic() + 30
        expected = 2 if name in ("api", "smtp-processes") else 1
        while time.monotonic() < deadline:
            settled = {int(p) for p in os.listdir(out) if p.isdigit()}
            settled -= set() if not forked else {proc.popen.pid}  # a group's parent is not what is asked
            if len(settled) >= expected:
                break
            assert proc.popen.poll() is None, proc.output()
            time.sleep(0.1)
        else:
            pytest.fail(f"{name}: {len(settled)} of {expected} process(es) frozen after 30 s\n{proc.output()}")
        assert all(int((out / str(pid)).read_text()) > 1000 for pid in settled)  # the start-up heap, not a few
    finally:
        proc.stop()
