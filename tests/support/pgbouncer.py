"""A private Debian `pgbouncer` in transaction mode in front of the test Postgres, on a free loopback port.

Its pool is tiny (2 server connections), so consecutive transactions of one client land on different
server connections: whatever Envoi keeps in a session instead of a transaction breaks here. pgbouncer
refuses to run as root; it then drops to the `postgres` user (-u). The binary is required (./dev test
installs it): a missing one fails the test, never skips it."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.support.processes import free_port
from tests.support.redis_sentinel import binary


class PgBouncer:
    def __init__(self, dsn: str, pool_size: int = 2):
        self.target = conninfo_to_dict(dsn)
        self.dbname = self.target.get("dbname", "postgres")
        self.pool_size = pool_size
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="envoi-pgbouncer-"))
        self.proc: subprocess.Popen | None = None

    def dsn(self) -> str:
        return make_conninfo("", host="127.0.0.1", port=self.port, dbname=self.dbname,
                             user=self.target.get("user", "postgres"))

    def start(self) -> PgBouncer:
        host, port = self.target.get("host", "127.0.0.1"), self.target.get("port", 5432)
        user = self.target.get("user", "postgres")
        password = f" password={self.target['password']}" if self.target.get("password") else ""
        conf = self.dir / "pgbouncer.ini"
        # auth_type any: the client's login is not checked; every server login is the database line's user.
        conf.write_text(f"""[databases]
{self.dbname} = host={host} port={port} dbname={self.dbname} user={user}{password}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = {self.pool_size}
min_pool_size = 0
max_client_conn = 500
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {self.dir}/pgbouncer.log
pidfile = {self.dir}/pgbouncer.pid
admin_users = {user}
stats_users = {user}
""")
        argv = [binary("pgbouncer"), str(conf)]
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.dir, conf):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            argv[1:1] = ["-u", "postgres"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2, prepare_threshold=None) as conn:
                    conn.execute("SELECT 1")
                return self
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not start:\n{self.log()}") from None
                time.sleep(0.05)

    def stats(self) -> dict:
        """SHOW STATS of the test database (pgbouncer's admin console: simple query protocol only)."""
        admin = make_conninfo(self.dsn(), dbname="pgbouncer")
        with psycopg.connect(admin, autocommit=True, prepare_threshold=None) as conn:
            cur = conn.cursor()
            cur.execute("SHOW STATS", prepare=False)
            names = [c.name for c in cur.description]
            for row in cur.fetchall():
                if row[0] == self.dbname:
                    return dict(zip(names, row, strict=True))
        return {}

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
