"""A private Postgres 15 cluster for a test that must restart or crash the server (the machine's shared
server is never touched): `initdb` into a temporary directory as the `postgres` OS user (Postgres refuses
to run as root), its own free port on 127.0.0.1, trust auth, torn down (stopped and deleted) at the end.

fsync is off: only the server is crashed (`pg_ctl restart -m immediate`), never the machine, so what was
written to the OS is still there for crash recovery; synchronous_commit stays on, so a commit that
answered is in the WAL the recovery replays."""

from __future__ import annotations

import contextlib
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from tests.support.processes import free_port

BIN = Path("/usr/lib/postgresql/15/bin")


class PostgresCluster:
    def __init__(self, user: str = "postgres"):
        self.user = user
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="envoi-pgcluster-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo("", host="127.0.0.1", port=self.port, dbname=dbname, user="postgres")

    def _run(self, *argv: str, timeout: float = 60) -> None:
        """A Postgres tool as the postgres OS user (the binaries are required: missing ones fail the test)."""
        subprocess.run(["runuser", "-u", self.user, "--", *argv], check=True, capture_output=True, text=True,
                       timeout=timeout, cwd=self.dir)

    def start(self) -> PostgresCluster:
        entry = pwd.getpwnam(self.user)
        shutil.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self._run(str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
                   " -c full_page_writes=off -c max_connections=60 -c shared_buffers=32MB")
        self._run(str(BIN / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log),
                  "-o", options)
        return self

    def restart(self, mode: str) -> float:
        """pg_ctl restart -m fast|immediate (the same options: pg_ctl keeps them); seconds it took."""
        started = time.monotonic()
        self._run(str(BIN / "pg_ctl"), "restart", "-w", "-t", "60", "-D", str(self.data), "-m", mode,
                  "-l", str(self.log))
        return time.monotonic() - started

    def wait_ready(self, dbname: str = "postgres", timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(dbname), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError):
                self._run(str(BIN / "pg_ctl"), "stop", "-w", "-D", str(self.data), "-m", "immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()
