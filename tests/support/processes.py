"""Start Envoi's real processes (and test servers) as subprocesses on free ports."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# How often wait_ready() asks a starting process (a refused connect costs microseconds): at 0.1 s each of
# the suite's few hundred start-ups overran its readiness by ~50 ms on average.
READY_POLL = 0.02


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(settings, **extra) -> dict:
    env = dict(os.environ)
    env.update({
        "ENVOI_REGION": settings.region,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "ENVOI_SECRET_KEY": base64.b64encode(settings.secret_key).decode(),
        "ENVOI_LOOKUP_KEY": base64.b64encode(settings.lookup_key).decode(),
        "PYTHONUNBUFFERED": "1",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Proc:
    """A child process whose output goes to a log file, shown when a test fails to start it."""

    def __init__(self, name: str, argv: list[str], env: dict, log_dir: Path):
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.popen = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self.log.open("wb"),
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self, check, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.output()}")
            try:
                if check():
                    return
            except OSError:
                pass
            time.sleep(READY_POLL)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.output()}")

    def stop(self, sig: int = 15) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def stop_all(procs) -> None:
    """Proc.stop for several processes at once: each is signalled at the same moment and has the same 10 s
    before SIGKILL, but their drains (seconds each, for some) overlap instead of adding up."""
    procs = [proc for proc in procs if proc.popen.poll() is None]
    for proc in procs:
        proc.popen.terminate()
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(5)


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as resp:
        return resp.status == 200


def envoi(*args: str) -> list[str]:
    return [sys.executable, "-m", "envoi.cli", *args]
