"""Development stack for `envoi up`: find or start Postgres and Redis, supervise child processes.

Postgres and Redis come from DATABASE_URL / REDIS_URL when those are set and reachable; otherwise private
ones run under var_dir on their own ports, as children of this process, with their data kept between runs.

Every child runs in its own process group: Ctrl-C reaches only us, and the Supervisor stops the children
in reverse start order (API before the database it uses), instead of the terminal signalling all at once.
"""

from __future__ import annotations

import atexit
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

log = logging.getLogger(__name__)

POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"  # Debian keeps initdb/postgres off PATH, here
APT_PACKAGES = {"postgresql": ("initdb", "pg_ctl", "postgres"), "redis-server": ("redis-server",)}
_print_lock = threading.Lock()


@dataclass
class Service:
    name: str
    url: str
    process: subprocess.Popen | None  # None = an existing external service was used


# --- probes -------------------------------------------------------------------------------------------


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    # Racy by nature (the port could be taken before use), good enough for dev and tests.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_error(dsn: str, timeout: float) -> str | None:
    """Why `dsn` is unusable, or None if a query works."""
    try:
        # libpq takes whole seconds here (and treats anything under 2 as 2).
        with psycopg.connect(dsn, connect_timeout=max(1, round(timeout)), autocommit=True) as conn:
            conn.execute("SELECT 1")
        return None
    except (psycopg.Error, OSError) as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def reachable_postgres(dsn: str, timeout: float = 2.0) -> bool:
    return _postgres_error(dsn, timeout) is None


def reachable_redis(url: str, timeout: float = 2.0) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ValueError:  # malformed URL
        return False
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _redact(url: str) -> str:
    """The URL without its password, for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


# --- binaries -----------------------------------------------------------------------------------------


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def find_binary(name: str, extra_dirs: Iterable[str] = ()) -> str | None:
    """`name` on PATH, else in extra_dirs, else in the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    pg_dirs = sorted(glob(POSTGRES_BIN_GLOB), key=_version_key, reverse=True)
    for d in [*extra_dirs, *pg_dirs]:
        candidate = Path(d) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _postgres_bindir() -> Path:
    # initdb and postgres must be the same major version: take postgres from initdb's real directory.
    initdb = find_binary("initdb")
    if initdb:
        bindir = Path(os.path.realpath(initdb)).parent
        if (bindir / "postgres").is_file():
            return bindir
    raise RuntimeError("Postgres server binaries (initdb, postgres) not found; apt-get install postgresql")


def ensure_packages(packages: Iterable[str] = tuple(APT_PACKAGES)) -> None:
    """apt-get install the packages (of APT_PACKAGES) whose binaries are missing; raise with advice if we can't."""
    missing = [p for p in packages if any(find_binary(b) is None for b in APT_PACKAGES[p])]
    if not missing:
        return
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise RuntimeError(
            f"{', '.join(missing)} not installed and cannot install it here (needs apt-get and root): "
            f"run `sudo {' '.join(install)}`, or set DATABASE_URL / REDIS_URL to running services"
        )
    log.warning("installing %s with apt-get (binaries not found)", " ".join(missing))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(install, check=True, env=env)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"`{' '.join(e.cmd)}` failed with exit code {e.returncode} (see its output above)") from e
    still = [b for p in missing for b in APT_PACKAGES[p] if find_binary(b) is None]
    if still:
        raise RuntimeError(f"apt-get installed {', '.join(missing)} but {', '.join(still)} still not found")


# --- child processes ----------------------------------------------------------------------------------


class _Child(subprocess.Popen):
    """A child in its own process group whose output is copied to our stdout, each line prefixed with its name.

    The last lines are kept for error messages. Reading the pipe continuously also keeps a chatty child
    from blocking on a full pipe.
    """

    def __init__(self, name: str, argv: list[str], stop_signal: int = signal.SIGTERM, **kwargs):
        super().__init__(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", bufsize=1, process_group=0, **kwargs,
        )
        self.name = name
        self.stop_signal = stop_signal  # postgres wants SIGINT: SIGTERM would wait for clients to leave
        self.tail: deque[str] = deque(maxlen=30)
        self._pump = threading.Thread(target=self._copy_output, name=f"output-{name}", daemon=True)
        self._pump.start()

    def _copy_output(self) -> None:
        for line in self.stdout:
            line = line.rstrip("\n")
            self.tail.append(line)
            with _print_lock:
                print(f"{self.name:>8} | {line}", file=sys.stdout, flush=True)

    def last_output(self) -> str:
        self._pump.join(timeout=1)  # let it read what a dead child wrote last
        return "\n".join(self.tail) or "(no output)"


def _wait_ready(proc: _Child, ready: Callable[[], bool], timeout: float) -> None:
    """Poll ready() until true; on exit or timeout stop the child and raise with its last output."""
    deadline = time.monotonic() + timeout
    error: Exception | None = None
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with code {proc.returncode} before it was ready; last output:\n"
                f"{proc.last_output()}"
            )
        try:
            if ready():
                return
        except Exception as e:  # a probe failing just means "not yet"; shown if it never succeeds
            error = e
        if time.monotonic() > deadline:
            _terminate(proc, grace=5)
            detail = f" (last check error: {error!r})" if error else ""
            raise RuntimeError(f"{proc.name} not ready after {timeout:g}s{detail}; last output:\n{proc.last_output()}")
        time.sleep(0.1)


def _terminate(proc: subprocess.Popen, grace: float, *, signalled: bool = False) -> None:
    if proc.poll() is None:
        if not signalled:
            proc.send_signal(getattr(proc, "stop_signal", signal.SIGTERM))
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            log.warning("pid %s still running %gs after being asked to stop: killing it", proc.pid, grace)
        try:  # the whole group if it has its own, so workers/backends don't outlive it
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except ProcessLookupError:
            pass
    proc.wait()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie nobody reaps is as good as gone


def _stop_leftover(pidfile: Path, marker: str, sig: int) -> None:
    """Stop a server left running by an earlier run that died without cleaning up (it would hold the port)."""
    try:
        pid = int(pidfile.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError, IndexError):
        return
    if marker not in cmdline or not _alive(pid):
        return  # stale file, or the pid now belongs to something else
    log.warning("stopping leftover %s (pid %d) from an earlier run", cmdline.split()[0], pid)
    os.kill(pid, sig)
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _check_port_free(name: str, port: int) -> None:
    if port_open("127.0.0.1", port):
        raise RuntimeError(f"cannot start private {name}: port {port} on 127.0.0.1 is already in use")


# --- private Postgres and Redis -----------------------------------------------------------------------


def _postgres_os_user() -> dict:
    """Popen arguments to drop root: initdb and postgres refuse to run as root."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "running as root, and initdb/postgres refuse to run as root; there is no `postgres` OS user to run "
            "them as: create one (useradd --system postgres), run as a normal user, or set DATABASE_URL"
        ) from None
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def start_postgres(var_dir: Path, port: int = 55432, timeout: float = 30, dbname: str = "envoi") -> Service:
    """Postgres under var_dir/pg (initialised once), as our child, listening on 127.0.0.1:port only, with
    the database `dbname`."""
    ensure_packages(["postgresql"])
    bindir = _postgres_bindir()
    pg_dir = Path(var_dir).resolve() / "pg"
    data, sockets = pg_dir / "data", pg_dir / "run"
    sockets.mkdir(parents=True, exist_ok=True)
    run_as = _postgres_os_user()
    if run_as:
        for d in (pg_dir, sockets):
            os.chown(d, run_as["user"], run_as["group"])
        # It also needs to get there: /root or a 0700 temp dir above var_dir would stop it.
        if subprocess.run(["test", "-w", str(pg_dir)], **run_as).returncode != 0:
            raise RuntimeError(
                f"the postgres OS user cannot write {pg_dir}: make the directories above it searchable by others "
                f"(chmod o+x), use another var dir, or run as a normal user"
            )

    _stop_leftover(data / "postmaster.pid", str(data), signal.SIGINT)
    _check_port_free("postgres", port)
    if not (data / "PG_VERSION").exists():
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync"]  # dev data: skip fsync for a fast first start
        done = subprocess.run(initdb, capture_output=True, text=True, cwd=pg_dir, **run_as)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")

    # The socket path must fit in sun_path (108 bytes); if var_dir is too deep, TCP only.
    socket_dir = str(sockets) if len(f"{sockets}/.s.PGSQL.{port}") < 100 else ""
    argv = [str(bindir / "postgres"), "-D", str(data), "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={socket_dir}"]
    proc = _Child("postgres", argv, stop_signal=signal.SIGINT, cwd=pg_dir, **run_as)
    admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    _wait_ready(proc, lambda: reachable_postgres(admin, timeout=2), timeout)
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
                conn.execute(f'CREATE DATABASE "{dbname}"')
    except BaseException:
        _terminate(proc, grace=10)
        raise
    return Service("postgres", f"postgresql://postgres@127.0.0.1:{port}/{dbname}", proc)


def start_redis(var_dir: Path, port: int = 56379, timeout: float = 15) -> Service:
    """Redis without persistence, working dir var_dir/redis, as our child, on 127.0.0.1:port only."""
    ensure_packages(["redis-server"])
    binary = find_binary("redis-server")
    redis_dir = Path(var_dir).resolve() / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    pidfile = redis_dir / "redis.pid"
    _stop_leftover(pidfile, "redis-server", signal.SIGTERM)
    _check_port_free("redis", port)
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(redis_dir), "--pidfile", str(pidfile)]  # pidfile: lets the next run stop a leftover
    proc = _Child("redis", argv, cwd=redis_dir)
    url = f"redis://127.0.0.1:{port}/0"
    _wait_ready(proc, lambda: reachable_redis(url, timeout=1), timeout)
    return Service("redis", url, proc)


def postgres_service(var_dir: Path, env: Mapping[str, str], port: int = 55432, dbname: str = "envoi") -> Service:
    """DATABASE_URL if set and reachable, else a private Postgres (with the database `dbname`)."""
    url = env.get("DATABASE_URL")
    if url:
        error = _postgres_error(url, timeout=2)
        if error is None:
            return Service("postgres", url, None)
        log.warning("DATABASE_URL %s is unreachable (%s): starting a private Postgres instead", _redact(url), error)
    return start_postgres(var_dir, port, dbname=dbname)


def redis_service(var_dir: Path, env: Mapping[str, str], port: int = 56379) -> Service:
    """REDIS_URL if set and reachable, else a private Redis."""
    url = env.get("REDIS_URL")
    if url:
        if reachable_redis(url):
            return Service("redis", url, None)
        log.warning("REDIS_URL %s is unreachable: starting a private Redis instead", _redact(url))
    return start_redis(var_dir, port)


# --- supervision --------------------------------------------------------------------------------------


class Supervisor:
    """Starts named child processes, prefixes their output lines with the name, stops them all (SIGTERM, then
    SIGKILL after a grace period) on stop() or when any one exits unexpectedly; stop order is the reverse of
    start order."""

    def __init__(self, grace: float = 10.0):
        self.grace = grace
        self._children: list[tuple[str, subprocess.Popen]] = []
        self._adopted = 0  # adopted children sit at the front of the list, so they are stopped last
        atexit.register(self.stop)  # an exception escaping `envoi up` must not leave servers behind

    def start(self, name: str, argv: list[str], env: dict | None = None,
              ready: Callable[[], bool] | None = None, timeout: float = 30) -> subprocess.Popen:
        """Start argv (env: variables layered over ours); wait until ready() is true or raise with its last output."""
        # Unbuffered so a Python child's lines show up as they happen, not when its buffer fills.
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = _Child(name, argv, env=child_env)
        if ready is not None:
            _wait_ready(proc, ready, timeout)  # stops the child itself on failure
        self._children.append((name, proc))
        return proc

    def adopt(self, name: str, process: subprocess.Popen) -> None:
        """Supervise a process started elsewhere (the private postgres/redis); adopted ones are stopped last."""
        self._children.insert(self._adopted, (name, process))
        self._adopted += 1

    def wait(self) -> int:
        """Block until SIGINT/SIGTERM/SIGHUP or a child exits, then stop all; 0 after a signal, else non-zero."""
        stop = threading.Event()
        previous = {}
        if threading.current_thread() is threading.main_thread():  # signal handlers only work there
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                previous[sig] = signal.signal(sig, lambda *_: stop.set())
        code = 0
        try:
            while not stop.wait(0.2):
                dead = next(((n, p) for n, p in self._children if p.poll() is not None), None)
                if dead:
                    name, proc = dead
                    log.error("%s exited unexpectedly with code %s: stopping everything", name, proc.returncode)
                    code = proc.returncode if proc.returncode > 0 else 1
                    break
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def stop(self) -> None:
        """The started children all at once (one grace period in all, not one each: a slow stopper must not
        leave the next ones running when whoever stops us runs out of patience), then the adopted ones
        (the databases the others use) in reverse order."""
        children, adopted = self._children[self._adopted:], self._children[:self._adopted]
        self._children, self._adopted = [], 0
        for name, proc in reversed(children):
            if proc.poll() is None:
                log.info("stopping %s (pid %d)", name, proc.pid)
                proc.send_signal(getattr(proc, "stop_signal", signal.SIGTERM))
        deadline = time.monotonic() + self.grace
        for _, proc in reversed(children):
            _terminate(proc, max(0.1, deadline - time.monotonic()), signalled=True)
        for name, proc in reversed(adopted):
            if proc.poll() is None:
                log.info("stopping %s (pid %d)", name, proc.pid)
            _terminate(proc, self.grace)


# --- one machine, two regions -------------------------------------------------------------------------


def region_database_url(url: str, region: str) -> str:
    """The region's database on the server of a shared DATABASE_URL: EU keeps its database (what one
    region always used), US gets `<name>_us` beside it."""
    if region == "eu":
        return url
    parts = urlsplit(url)
    if parts.scheme.startswith("postgres"):
        return urlunsplit(parts._replace(path=f"/{parts.path.strip('/') or 'envoi'}_{region}"))
    name = psycopg.conninfo.conninfo_to_dict(url).get("dbname") or "envoi"  # a key=value DSN
    return psycopg.conninfo.make_conninfo(url, dbname=f"{name}_{region}")


def region_redis_url(url: str, region: str) -> str:
    """The region's db number on the server of a shared REDIS_URL: EU keeps its db, US the next one."""
    if region == "eu":
        return url
    parts = urlsplit(url)
    number = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(number + 1) % 16}"))


def create_database_if_reachable(url: str) -> None:
    """Create the DSN's database when its server answers (postgres_service then finds it reachable)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    admin = psycopg.conninfo.make_conninfo(url, dbname="postgres")
    if not info.get("dbname") or not reachable_postgres(admin):
        return
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (info["dbname"],)).fetchone():
            conn.execute(f'CREATE DATABASE "{info["dbname"]}"')
