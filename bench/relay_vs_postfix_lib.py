"""Shared harness for bench/relay_vs_postfix.py, bench/e2e.py and bench/backlog.py.

Pieces: Postfix's `smtp-sink` as the counting sink; Postfix + OpenDKIM (RSA-2048) relaying to it;
a private Envoi region (own Postgres database, own Redis db, `envoi relay`, `envoi smtp`,
`envoi api`) relaying to it; identical ~5 KB test messages to 1,000 recipient domains; SMTP and
HTTP injectors. Everything binds to 127.0.0.1. Needs root for Postfix (it rewrites
/etc/postfix/{main,master}.cf and restores them at exit).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
DOMAIN = "bench.envoi.test"
NDOMAINS = 1000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


# messages ------------------------------------------------------------------------------------
def html_body(name: str = "") -> str:
    """A ~5 KB HTML body with 10 links (what click tracking rewrites; --webhooks phases send it)."""
    links = "".join(f'<p><a href="https://shop.example.com/orders/item-{k}?ref=mail">Item {k}: see your order</a></p>\r\n'
                    for k in range(10))
    para = "<p>Thank you for your order. Your parcel is on its way and will arrive soon.</p>\r\n"
    return f"<html><body><p>Hello {name}</p>\r\n{links}{para * 50}</body></html>\r\n"


def make_messages(n: int, run: str, size: int = 5000, html: bool = False) -> list[tuple[str, str, bytes]]:
    """n (mail_from, rcpt, raw MIME) of ~size bytes to 1,000 recipient domains; html: a text/html part
    with 10 links (html_body) after a short text part, as multipart/alternative."""
    line = b"Thank you for your order. Your parcel is on its way and will arrive soon.\r\n"
    out = []
    date = formatdate(localtime=False).encode()
    alternative = html_body().encode() if html else b""
    for i in range(n):
        rcpt = f"rcpt{i}@d{i % NDOMAINS:03d}.example.net"
        ctype = ('multipart/alternative; boundary="alt-bench"' if html else "text/plain; charset=utf-8")
        head = (
            f"From: Bench <bench@{DOMAIN}>\r\nTo: <{rcpt}>\r\nSubject: Bench message {i}\r\n"
            f"Message-ID: <{run}.{i}@{DOMAIN}>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: {ctype}\r\n"
            f"List-Unsubscribe: <https://{DOMAIN}/u/{i}>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        ).encode() + b"Date: " + date + b"\r\n\r\n"
        if html:
            body = (b"--alt-bench\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + line * 5
                    + b"--alt-bench\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + alternative
                    + b"--alt-bench--\r\n")
            out.append((f"bench@{DOMAIN}", rcpt, head + body))
        else:
            out.append((f"bench@{DOMAIN}", rcpt, head + line * ((size - len(head)) // len(line) + 1)))
    return out


# the sink ------------------------------------------------------------------------------------
class SmtpSink:
    """Postfix's smtp-sink counting messages (-c); count() reads its running total."""

    def __init__(self, workdir: Path, port: int | None = None, extra: tuple[str, ...] = ()):
        self.port = port or free_port()
        self.out = workdir / f"sink-{uuid.uuid4().hex[:6]}.out"
        self.extra = extra  # e.g. ("-r", "rcpt"): answer RCPT with 4xx
        self.proc: subprocess.Popen | None = None

    def start(self) -> SmtpSink:
        ensure_postfix()  # smtp-sink comes with Debian's postfix package
        binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        self.proc = subprocess.Popen([binary, "-u", "nobody", "-c", *self.extra, f"127.0.0.1:{self.port}", "1024"],
                                     stdout=self.out.open("wb"), stderr=subprocess.STDOUT)
        wait_port(self.port, proc=self.proc)
        return self

    def count(self) -> int:
        try:
            with self.out.open("rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 400))
                tail = f.read().decode(errors="replace").replace("\r", "\n")
        except OSError:
            return 0
        found = re.findall(r"mesg=(\d+)", tail)
        return int(found[-1]) if found else 0

    def wait_count(self, n: int, timeout: float = 900.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count() >= n:
                return time.time()
            time.sleep(0.05)
        raise TimeoutError(f"sink has {self.count()} of {n} messages after {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


# Postfix + OpenDKIM --------------------------------------------------------------------------
def ensure_postfix() -> None:
    if shutil.which("postfix") and shutil.which("opendkim") and shutil.which("smtp-sink"):
        return
    log("installing Debian's postfix and opendkim (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for line in ("postfix postfix/main_mailer_type select No configuration",
                 "postfix postfix/mailname string bench.localdomain"):
        subprocess.run(["debconf-set-selections"], input=line.encode(), check=True)
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postfix", "opendkim", "opendkim-tools"], env=env, check=True)
    subprocess.run(["postfix", "stop"], capture_output=True)


class PostfixStack:
    """Postfix listening on 127.0.0.1:port, relayhost = the sink, OpenDKIM milter on a unix socket."""

    def __init__(self, workdir: Path, sink_port: int, port: int | None = None, dkim: bool = True,
                 concurrency: int = 50):
        self.concurrency = concurrency  # sessions to the sink: the same as Envoi's relay gets
        self.workdir = workdir / "postfix"
        self.sink_port = sink_port
        self.port = port or free_port()
        self.dkim = dkim
        self.opendkim: subprocess.Popen | None = None
        self.saved: dict[str, bytes | None] = {}  # None: the file did not exist before

    def _write_config(self) -> None:
        etc = Path("/etc/postfix")
        for name in ("main.cf", "master.cf"):
            self.saved[name] = (etc / name).read_bytes() if (etc / name).exists() else None
        sock = self.workdir / "milter" / "opendkim.sock"
        main = f"""# written by envoi bench/relay_vs_postfix (restored at exit)
compatibility_level = 3.6
myhostname = postfix.bench.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{self.sink_port}
default_destination_concurrency_limit = {self.concurrency}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtputf8_enable = no
biff = no
maillog_file = /var/log/postfix-envoi-bench.log
"""
        if self.dkim:
            main += f"""smtpd_milters = unix:{sock}
non_smtpd_milters = $smtpd_milters
milter_default_action = tempfail
milter_protocol = 6
"""
        (etc / "main.cf").write_text(main)
        services = ["smtpd inet", "pickup unix n - n 60 1", "cleanup unix n - n - 0", "qmgr unix n - n 300 1",
                    "tlsmgr unix - - n 1000? 1", "rewrite unix - - n - -", "bounce unix - - n - 0",
                    "defer unix - - n - 0", "trace unix - - n - 0", "verify unix - - n - 1",
                    "flush unix n - n 1000? 0", "proxymap unix - - n - -", "proxywrite unix - - n - 1",
                    "smtp unix - - n - -", "relay unix - - n - -", "showq unix n - n - -",
                    "error unix - - n - -", "retry unix - - n - -", "discard unix - - n - -",
                    "local unix - n n - -", "anvil unix - - n - 1", "scache unix - - n - 1",
                    "postlog unix-dgram n - n - 1"]
        lines = [f"127.0.0.1:{self.port} inet n - n - - smtpd"]
        for spec in services[1:]:
            name, rest = spec.split(" ", 1)
            if name in ("postlog",):
                lines.append(f"{name} {rest} postlogd")
            elif name in ("relay", "smtp"):
                lines.append(f"{name} {rest} smtp")
            elif name in ("defer", "trace"):
                lines.append(f"{name} {rest} bounce")
            elif name == "rewrite":
                lines.append(f"{name} {rest} trivial-rewrite")
            elif name == "retry":
                lines.append(f"{name} {rest} error")
            elif name == "proxywrite":
                lines.append(f"{name} {rest} proxymap")
            else:
                lines.append(f"{name} {rest} {name}")
        (etc / "master.cf").write_text("\n".join(lines) + "\n")
        subprocess.run(["postfix", "check"], check=True)

    def _start_opendkim(self) -> None:
        keys = self.workdir / "dkim"
        keys.mkdir(parents=True, exist_ok=True)
        if not (keys / "bench.private").exists():
            subprocess.run(["opendkim-genkey", "-b", "2048", "-d", DOMAIN, "-s", "bench", "-D", str(keys)],
                           check=True)
        sockdir = self.workdir / "milter"
        sockdir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (sockdir / "opendkim.sock").unlink()
        subprocess.run(["chown", "-R", "opendkim:opendkim", str(keys), str(sockdir)], check=True)
        os.chmod(keys, 0o700)
        os.chmod(sockdir, 0o755)
        os.chmod(self.workdir, 0o755)
        os.chmod(self.workdir.parent, 0o755)  # mkdtemp makes it 0700: opendkim must reach its socket dir
        conf = keys / "opendkim.conf"
        conf.write_text(f"""Syslog no
Mode s
Domain {DOMAIN}
Selector bench
KeyFile {keys}/bench.private
Canonicalization relaxed/relaxed
SignatureAlgorithm rsa-sha256
Socket local:{sockdir}/opendkim.sock
InternalHosts 127.0.0.1
UserID opendkim
UMask 000
RequireSafeKeys false
""")
        self.opendkim = subprocess.Popen(["opendkim", "-f", "-x", str(conf)])
        deadline = time.monotonic() + 15
        while not (sockdir / "opendkim.sock").exists():
            if time.monotonic() > deadline or self.opendkim.poll() is not None:
                raise RuntimeError("opendkim did not start")
            time.sleep(0.1)

    def start(self) -> PostfixStack:
        ensure_postfix()
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["postfix", "stop"], capture_output=True)
        self._write_config()
        if self.dkim:
            self._start_opendkim()
        subprocess.run(["postfix", "start"], check=True, capture_output=True)
        wait_port(self.port)
        return self

    def pids(self) -> list[int]:
        """Postfix's master (its children: smtpd, cleanup, qmgr, smtp) and OpenDKIM."""
        pids = [self.opendkim.pid] if self.opendkim else []
        with contextlib.suppress(OSError, ValueError):
            pids.append(int(Path("/var/spool/postfix/pid/master.pid").read_text().split()[0]))
        return pids

    def stop(self) -> None:
        subprocess.run(["postfix", "stop"], capture_output=True)
        if self.opendkim and self.opendkim.poll() is None:
            self.opendkim.terminate()
            self.opendkim.wait(10)
        for name, data in self.saved.items():
            if data is None:
                Path("/etc/postfix", name).unlink(missing_ok=True)
            else:
                Path("/etc/postfix", name).write_bytes(data)


# Envoi ---------------------------------------------------------------------------------------
class Receiver:
    """bench/webhook_receiver.py in its own process: counts webhooks, checks every signature (the key
    under "*"), and the event -> received latency (now minus the event-data's timestamp)."""

    def __init__(self, workdir: Path, key: str, port: int):
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "keys.json").write_text(json.dumps({"*": key}))
        self.port, slow = port, free_port()
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parent / "webhook_receiver.py"),
                                      str(self.port), str(slow), str(workdir / "keys.json")],
                                     stdout=(workdir / "receiver.log").open("wb"), stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            try:
                self.stats()
                return
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as resp:
            return json.loads(resp.read())

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{self.port}/reset", method="POST"),
                               timeout=10)

    def wait(self, total: int, timeout: float = 600) -> float:
        deadline = time.time() + timeout
        while self.stats()["received"] < total:
            if time.time() > deadline:
                raise RuntimeError(f"the receiver got {self.stats()['received']} webhooks of {total}")
            time.sleep(0.05)
        return time.time()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _free_redis_db() -> int:
    import redis

    for number in range(15, 0, -1):
        conn = redis.Redis.from_url(f"{REDIS_BASE}/{number}")
        if conn.dbsize() == 0 and conn.set("envoi:bench:claim", "1", nx=True, ex=7200):
            return number
    raise RuntimeError("no empty Redis database for the benchmark")


@dataclass
class EnvoiStack:
    """A private Envoi region: own database and Redis db, relay + smtp + api processes."""

    workdir: Path
    sink_port: int
    relay_connections: int = 50
    api_workers: int = 2
    api_threads: int = 8
    smtp_processes: int = 1  # `envoi smtp --processes` (one process and its commit stage beat two on 2 cores)
    processes: tuple[str, ...] = ("relay", "smtp", "api")
    extra_env: dict = field(default_factory=dict)
    root: Path = ROOT  # the checkout whose envoi this region runs (another revision for an A/B run)
    # With a URL: open, click and unsubscribe tracking on for the domain, `delivered` subscribed to this URL, and
    # `envoi webhooks dispatch` among the processes (add "dispatch" to `processes`).
    webhook_url: str = ""
    dbname: str = field(default_factory=lambda: f"envoi_bench_{uuid.uuid4().hex[:8]}")
    procs: dict = field(default_factory=dict)

    def __post_init__(self):
        import psycopg

        self.database_url = psycopg.conninfo.make_conninfo(PG_ADMIN, dbname=self.dbname)
        self.redis_url = f"{REDIS_BASE}/{_free_redis_db()}"
        self.secret_key = secrets.token_bytes(32)
        self.api_port = free_port()
        self.smtp_port = free_port()
        self.smtps_port = free_port()

    def env(self) -> dict:
        env = dict(os.environ)
        env.update({
            "ENVOI_REGION": "eu", "DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url,
            "ENVOI_SECRET_KEY": base64.b64encode(self.secret_key).decode(),
            "ENVOI_LOOKUP_KEY": base64.b64encode(self.secret_key).decode(),  # throwaway data: one key for both
            "ENVOI_SMTP_ROUTE": f"127.0.0.1:{self.sink_port}",
            "ENVOI_RELAY_CONNECTIONS": str(self.relay_connections),
            "ENVOI_PUBLIC_URL": f"http://127.0.0.1:{self.api_port}", "PYTHONUNBUFFERED": "1",
        })
        if self.root != ROOT:
            env["PYTHONPATH"] = str(self.root)
        env.update(self.extra_env)
        return env

    def settings(self):
        from envoi.infra.settings import Settings

        return Settings(region="eu", database_url=self.database_url, redis_url=self.redis_url,
                        secret_key=self.secret_key, lookup_key=self.secret_key)

    def setup(self) -> EnvoiStack:
        """Database, account, verified domain (RSA-2048), API key and SMTP login, made by the region's
        own code: in this process, or for another checkout in a child process importing that one."""
        secret = base64.b64encode(self.secret_key).decode()
        if self.root == ROOT:
            made = _setup_region(self.database_url, self.redis_url, secret, self.webhook_url)
        else:
            out = subprocess.run([sys.executable, __file__, "--setup", self.database_url, self.redis_url, secret,
                                  self.webhook_url],
                                 env=self.env(), cwd=self.root, capture_output=True, text=True, check=True)
            made = json.loads(out.stdout.strip().splitlines()[-1])
        self.domain, self.api_key, self.account = made["domain"], made["api_key"], made["account"]
        self.smtp_login, self.smtp_password = made["smtp_login"], made["smtp_password"]
        self.signing_key = made.get("signing_key")
        return self

    def start(self) -> EnvoiStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        py = sys.executable
        commands = {
            "relay": [py, "-m", "envoi.cli", "relay", "--metrics-port", "0"],
            "smtp": [py, "-m", "envoi.cli", "smtp", "--port", str(self.smtp_port), "--smtps-port",
                     str(self.smtps_port), "--var", str(self.workdir / "var"), "--processes",
                     str(self.smtp_processes)],
            "api": [py, "-m", "envoi.cli", "api", "--bind", f"127.0.0.1:{self.api_port}", "--workers",
                    str(self.api_workers), "--threads", str(self.api_threads)],
            "dispatch": [py, "-m", "envoi.cli", "webhooks", "dispatch", "--processes", "1"],
        }
        for name in self.processes:
            self.procs[name] = subprocess.Popen(commands[name], env=self.env(), cwd=self.root,
                                                stdout=(self.workdir / f"{name}.log").open("wb"),
                                                stderr=subprocess.STDOUT, start_new_session=True)
        if "smtp" in self.procs:
            wait_port(self.smtp_port, proc=self.procs["smtp"])
        if "api" in self.procs:
            wait_port(self.api_port, proc=self.procs["api"])
        time.sleep(1.0)
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"envoi {name} exited: {(self.workdir / f'{name}.log').read_text()[-2000:]}")
        return self

    def stop_process(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def stop(self, drop: bool = True) -> None:
        for name in list(self.procs):
            self.stop_process(name)
        if drop:
            import psycopg
            import redis

            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
            redis.Redis.from_url(self.redis_url).flushdb()

    def connect(self):
        import psycopg
        from psycopg.rows import dict_row

        # On a shared machine other engineers' regions may hold every Postgres connection for a moment:
        # the harness's own look-ups wait for one (up to a minute) rather than end the run.
        for attempt in range(60):
            try:
                return psycopg.connect(self.database_url, autocommit=True, row_factory=dict_row)
            except psycopg.OperationalError as ex:
                if "too many clients" not in str(ex) or attempt == 59:
                    raise
                time.sleep(1.0)

    def vacuum(self) -> None:
        """VACUUM ANALYZE the queue tables, as autovacuum would in production (this machine's Postgres
        runs with autovacuum off, so a second phase would otherwise pay for the first one's dead rows)."""
        with self.connect() as conn:
            conn.execute("VACUUM (ANALYZE) recipients, messages")

    def transactions(self) -> int:
        """Transactions committed in this region's database so far (counted work: a group commit that
        carries fewer messages shows as more transactions per message). Backends report their counts
        within a second of going idle."""
        time.sleep(1.2)
        with self.connect() as conn:
            return conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s",
                                (self.dbname,)).fetchone()["xact_commit"]

    def accepted(self) -> int:
        """Recipients accepted so far (a wrk phase may send a few requests beyond its count when its
        threads stop: the sink waits for what was accepted)."""
        with self.connect() as conn:
            return conn.execute("SELECT count(*) AS n FROM recipients").fetchone()["n"]

    def postgres_cpu(self) -> float:
        """CPU seconds used so far by the Postgres backends serving this region's database."""
        with self.connect() as conn:
            pids = [r["pid"] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                                                   (self.dbname,)).fetchall()]
        return cpu_seconds(pids)

    def latencies(self, run: str) -> list[float]:
        """accept -> delivered seconds of the recipients of this run (messages.created_at: the accept
        transaction; recipients.updated_at: the commit that recorded the delivery)."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT extract(epoch FROM r.updated_at - m.created_at) AS s FROM recipients r"
                " JOIN messages m ON m.id = r.message_pk WHERE r.status = 'delivered' AND m.message_id LIKE %s",
                (f"{run}.%",),
            ).fetchall()
        return [float(r["s"]) for r in rows]


def _setup_region(database_url: str, redis_url: str, secret: str, webhook_url: str = "") -> dict:
    from envoi import runtime
    from envoi.infra.migrate import ensure_database, migrate
    from envoi.infra.settings import Settings

    ensure_database(database_url)
    migrate(database_url)
    services = runtime.build(Settings(region="eu", database_url=database_url, redis_url=redis_url,
                                      secret_key=base64.b64decode(secret), lookup_key=base64.b64decode(secret),
                                      webhook_allow=("127.0.0.1/32",) if webhook_url else ()),
                             pool_size=2)
    try:
        accounts = services.accounts
        account = accounts.create_account("bench")
        try:
            domain = accounts.add_domain(account["id"], DOMAIN, dkim_key_size=2048, verified=True)
        except TypeError:  # a revision from before domain verification
            domain = accounts.add_domain(account["id"], DOMAIN, dkim_key_size=2048)
        accounts.set_domain_state(domain["id"], "active")
        _, api_key = accounts.create_key(account["id"], "admin")
        password = secrets.token_urlsafe(16)
        accounts.create_credential(account["id"], DOMAIN, "bench", password)
        signing_key = None
        if webhook_url:
            for kind in ("open", "click", "unsubscribe"):
                services.tracking.update_settings(domain, kind, {"active": "yes"})
            services.webhooks.create(domain, "delivered", [webhook_url])
            signing_key = services.webhooks.signing_key(account["id"])
    finally:
        services.close()
    return {"domain": domain, "account": account, "api_key": api_key, "smtp_login": f"bench@{DOMAIN}",
            "smtp_password": password, "signing_key": signing_key}


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def warm_then_pause_relay(stack: EnvoiStack, sink: SmtpSink, warm: int = 500) -> int:
    """Start a set-up region, deliver `warm` messages through it, then SIGSTOP its relay (a queue builds
    up for a measured drain); return the relay's pid (SIGCONT resumes it)."""
    stack.start()
    base = sink.count()
    inject_http(stack.api_port, stack.api_key, make_messages(warm, f"warm-{uuid.uuid4().hex[:6]}"), 16)
    sink.wait_count(base + warm)
    relay = stack.procs["relay"].pid
    os.kill(relay, signal.SIGSTOP)
    return relay


# injectors -----------------------------------------------------------------------------------
def inject_smtp(port: int, messages: list, sessions: int = 20, *, auth: tuple[str, str] | None = None,
                starttls: bool = False) -> float:
    """Send every message over `sessions` reused SMTP connections; return the seconds it took.

    The conversation is the one aiosmtplib (or smtplib) holds, a command and its reply at a time, no
    PIPELINING: what the server does per message is what an ordinary client makes it do. The client is
    lean (asyncio streams on uvloop, bytes prepared before the clock starts) because it runs on the
    machine it measures: aiosmtplib's per-command machinery cost ~0.35 ms of CPU per message, ~0.3 of a
    core at Envoi's rate, against wrk's ~0.04 for the HTTP paths (the issue asks a light injector)."""
    queue = [(b"MAIL FROM:<%s>\r\n" % f.encode(), b"RCPT TO:<%s>\r\n" % r.encode(), _dot_stuffed(raw))
             for f, r, raw in reversed(messages)]
    login = b"AUTH PLAIN " + base64.b64encode(b"\0%s\0%s" % (auth[0].encode(), auth[1].encode())) + b"\r\n" \
        if auth else b""

    async def main() -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

        async def reply(reader: asyncio.StreamReader, expect: bytes) -> None:
            while True:  # a multiline reply ends with the line whose 4th octet is a space
                line = await reader.readuntil(b"\r\n")
                if line[3:4] != b"-":
                    break
            if not line.startswith(expect):
                raise RuntimeError(f"SMTP injector: expected {expect!r}, got {line!r}")

        async def command(reader, writer, line: bytes, expect: bytes) -> None:
            writer.write(line)
            await reply(reader, expect)

        async def worker() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            await reply(reader, b"220")
            await command(reader, writer, b"EHLO injector.bench\r\n", b"250")
            if starttls:
                await command(reader, writer, b"STARTTLS\r\n", b"220")
                await writer.start_tls(context)
                await command(reader, writer, b"EHLO injector.bench\r\n", b"250")
            if login:
                await command(reader, writer, login, b"235")
            while queue:
                mail, rcpt, data = queue.pop()
                await command(reader, writer, mail, b"250")
                await command(reader, writer, rcpt, b"250")
                await command(reader, writer, b"DATA\r\n", b"354")
                await command(reader, writer, data, b"250")
            writer.write(b"QUIT\r\n")
            with contextlib.suppress(Exception):
                await reply(reader, b"221")
            writer.close()

        await asyncio.gather(*(worker() for _ in range(sessions)))

    started = time.monotonic()
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    return time.monotonic() - started


def _dot_stuffed(raw: bytes) -> bytes:
    """A message as DATA carries it: CRLF line ends, leading dots doubled, the final dot line."""
    data = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def _multipart(domain_rcpt: str, raw: bytes, boundary: str) -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\n{domain_rcpt}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"message\"; filename=\"m.eml\"\r\n"
            f"Content-Type: message/rfc822\r\n\r\n").encode() + raw + f"\r\n--{boundary}--\r\n".encode()


def inject_http(port: int, api_key: str, messages: list, concurrency: int = 16,
                rate: float | None = None) -> tuple[float, int]:
    """POST each message to /v3/<domain>/messages.mime over keep-alive connections (optionally paced
    at `rate` msg/s); return (seconds, errors)."""
    auth = "Basic " + base64.b64encode(f"api:{api_key}".encode()).decode()
    boundary = "envoibench" + uuid.uuid4().hex
    lock = threading.Lock()
    state = {"next": 0, "errors": 0}
    started = time.monotonic()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = state["next"]
                state["next"] += 1
            if i >= len(messages):
                break
            if rate:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            _, rcpt, raw = messages[i]
            body = _multipart(rcpt, raw, boundary)
            for attempt in range(3):
                try:
                    conn.request("POST", f"/v3/{DOMAIN}/messages.mime", body=body, headers={
                        "Authorization": auth, "Content-Type": f"multipart/form-data; boundary={boundary}"})
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status != 200:
                        with lock:
                            state["errors"] += 1
                    break
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                    if attempt == 2:
                        with lock:
                            state["errors"] += 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - started, state["errors"]


WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_messages.lua"
WRK_KINDS = ("urlencoded", "multipart", "attachment", "mime")


def ensure_wrk() -> str:
    """Debian's wrk (a C load generator: its CPU per request is a small fraction of the server's)."""
    if not shutil.which("wrk"):
        log("installing Debian's wrk (apt-get)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, check=False)
    binary = shutil.which("wrk")
    if not binary:
        raise RuntimeError("wrk is needed for the HTTP phases: apt-get install wrk (Debian/Ubuntu)")
    return binary


@dataclass
class WrkResult:
    seconds: float  # from starting wrk until every thread's share was answered
    requests: int
    non2xx: int
    socket_errors: int
    p50_ms: float  # accept latency: request sent -> HTTP response (the 200 comes after the commit)
    p99_ms: float
    injector_cpu_s: float  # wrk's own user+system CPU


def inject_wrk(port: int, api_key: str, kind: str, n: int, run: str, connections: int = 16, threads: int = 2,
               rate: float | None = None, html: bool = False) -> WrkResult:
    """POST n distinct ~5 KB messages with wrk and bench/wrk_messages.lua. kind: urlencoded (form fields
    to /messages), multipart (the same fields as multipart/form-data), attachment (multipart plus a ~2 KB
    attachment), mime (/messages.mime). rate paces each connection (connections / rate seconds apart).
    html: the messages carry a 10-link HTML body (html_body) as well as the text."""
    assert kind in WRK_KINDS
    binary = ensure_wrk()
    done = Path(tempfile.gettempdir()) / f"wrk-{run}"
    done.mkdir(parents=True)
    auth = "Basic " + base64.b64encode(f"api:{api_key}".encode()).decode()
    env = dict(os.environ, BENCH_KIND=kind, BENCH_DOMAIN=DOMAIN, BENCH_AUTH=auth, BENCH_N=str(n),
               BENCH_THREADS=str(threads), BENCH_RUN=run, BENCH_DONE=str(done),
               BENCH_DELAY_MS=f"{connections / rate * 1000:.3f}" if rate else "0",
               BENCH_HTML=html_body() if html else "")
    connections = max(connections, threads)
    started = time.monotonic()
    proc = subprocess.Popen([binary, "-t", str(threads), "-c", str(connections), "-d", "3600s", "--timeout", "120s",
                             "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # wrk runs for its -d; the script stops each thread after its share and drops a marker: then SIGINT
    # makes wrk print its summary at once.
    while len(list(done.iterdir())) < min(threads, n) and proc.poll() is None:
        time.sleep(0.01)
    seconds = time.monotonic() - started
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(2)
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    shutil.rmtree(done, ignore_errors=True)
    found = re.search(r"ENVOI_WRK (\{.*\})", out)
    if not found:
        raise RuntimeError(f"wrk printed no summary (exit {proc.returncode}):\n{out[-2000:]}")
    stats = json.loads(found.group(1))
    return WrkResult(seconds=seconds, requests=stats["requests"], non2xx=stats["non2xx"],
                     socket_errors=stats["socket_errors"], p50_ms=stats["p50_ms"], p99_ms=stats["p99_ms"],
                     injector_cpu_s=usage.ru_utime + usage.ru_stime)


def inject_batch(port: int, api_key: str, batches: int, run: str, size: int = 1000, concurrency: int = 4,
                 html: bool = False) -> tuple[float, int, float]:
    """POST `batches` batch sends to /messages: `size` recipients each (one per domain of the 1,000) with
    recipient-variables, ~5 KB text with %recipient.name% (html: plus html_body with it); return (seconds,
    errors, injector CPU s)."""
    auth = "Basic " + base64.b64encode(f"api:{api_key}".encode()).decode()
    line = "Hello %recipient.name%, thank you for your order. Your parcel is on its way.\r\n"
    text = line * (5000 // len(line) + 1)
    bodies = []
    for b in range(batches):
        rcpts = [f"b{b}r{i}@d{i % NDOMAINS:03d}.example.net" for i in range(size)]
        variables = {r: {"name": f"Customer {i}", "id": i} for i, r in enumerate(rcpts)}
        fields = {"from": f"Bench <bench@{DOMAIN}>", "to": ",".join(rcpts), "subject": "Your order, %recipient.name%",
                  "text": text, "o:tag": run, "recipient-variables": json.dumps(variables)}
        if html:
            fields["html"] = html_body("%recipient.name%")
        bodies.append(urllib.parse.urlencode(fields).encode())
    lock = threading.Lock()
    state = {"next": 0, "errors": 0}
    cpu0 = time.process_time()
    started = time.monotonic()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                i = state["next"]
                state["next"] += 1
            if i >= len(bodies):
                break
            conn.request("POST", f"/v3/{DOMAIN}/messages", body=bodies[i], headers={
                "Authorization": auth, "Content-Type": "application/x-www-form-urlencoded"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                with lock:
                    state["errors"] += 1
        conn.close()

    workers = [threading.Thread(target=worker) for _ in range(min(concurrency, batches))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return time.monotonic() - started, state["errors"], time.process_time() - cpu0


def cpu_seconds(pids: list[int]) -> float:
    """user+system CPU seconds of these processes and their children so far (from /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids, todo = set(), list(pids)
    while todo:  # the processes and their live descendants (gunicorn's workers)
        pid = todo.pop()
        pids.add(pid)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:13]) / tick
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


if __name__ == "__main__" and sys.argv[1:2] == ["--setup"]:  # EnvoiStack.setup() for another checkout
    print(json.dumps(_setup_region(*sys.argv[2:6]), default=str))
