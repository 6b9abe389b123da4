"""Separate network stacks for relay hosts: one Linux network namespace per host, each with its own
addresses, joined to the root namespace by veth pairs on a bridge. Needs root (`ip netns`).

The root side of the bridge (`gateway`) is where the test's servers listen (sink, DNS) and where
`socat` forwards to Postgres and Redis, which listen on 127.0.0.1 only. Names carry the test's pid,
so parallel runs don't collide, and `close()` removes everything even after a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from urllib.parse import urlsplit, urlunsplit


def _ip(*args: str, ns: str | None = None) -> None:
    argv = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    subprocess.run(argv, check=True, capture_output=True, text=True)


def available() -> bool:
    """Can this process make network namespaces (root, iproute2, socat)?"""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("socat"):
        return False
    return subprocess.run(["ip", "netns", "list"], capture_output=True).returncode == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hosts:
    """A bridge with `gateway` (root namespace) and one namespace per host name, the host holding
    the addresses given for it (the first one is its own, the others are its egress IPs)."""

    def __init__(self, hosts: dict[str, list[str]], prefix: str | None = None):
        pid = os.getpid()
        self.tag = f"{pid % 100000}"
        # A /24 of our own per run: 10.(100 + pid % 100).(pid // 100 % 250).0/24.
        self.prefix = prefix or f"10.{100 + pid % 100}.{pid // 100 % 250}"
        self.gateway = f"{self.prefix}.1"
        self.bridge = f"evb{self.tag}"
        self.hosts = {name: [a.format(net=self.prefix) for a in addrs] for name, addrs in hosts.items()}
        self.ns = {name: f"envoi-{self.tag}-{name}" for name in hosts}
        self._procs: list[subprocess.Popen] = []
        self._links: list[str] = []
        self._urls: tuple[str, str] | None = None

    def __enter__(self) -> Hosts:
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def up(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._links.append(self.bridge)
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for n, (name, addresses) in enumerate(self.hosts.items()):
            ns, outer, inner = self.ns[name], f"evo{self.tag}{n}", f"evi{self.tag}{n}"
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            self._links.append(outer)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", self.bridge, "up")
            _ip("link", "set", "lo", "up", ns=ns)
            for address in addresses:
                _ip("addr", "add", f"{address}/24", "dev", inner, ns=ns)
            _ip("link", "set", inner, "up", ns=ns)

    def forward(self, port: int, target: tuple[str, int]) -> int:
        """Listen on gateway:port and forward to target (e.g. Postgres on 127.0.0.1)."""
        proc = subprocess.Popen(["socat", f"TCP-LISTEN:{port},bind={self.gateway},fork,reuseaddr",
                                 f"TCP:{target[0]}:{target[1]}"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self._procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection((self.gateway, port), timeout=0.5).close()
                return port
            time.sleep(0.05)
        raise RuntimeError(f"socat on {self.gateway}:{port} did not start")

    def reach(self, database_url: str, redis_url: str) -> tuple[str, str]:
        """The region's Postgres and Redis URLs as seen from inside a namespace: via socat on the gateway
        (started on first use)."""
        if self._urls is None:
            from psycopg.conninfo import conninfo_to_dict, make_conninfo

            pg = conninfo_to_dict(database_url)
            pg_port = self.forward(_free_port(), (pg.get("host") or "127.0.0.1", int(pg.get("port") or 5432)))
            parts = urlsplit(redis_url)
            rd_port = self.forward(_free_port(), (parts.hostname or "127.0.0.1", parts.port or 6379))
            self._urls = (make_conninfo(database_url, host=self.gateway, port=pg_port),
                          urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[0]
                                                    + ("@" if "@" in parts.netloc else "")
                                                    + f"{self.gateway}:{rd_port}")))
        return self._urls

    def exec_argv(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[host], *argv]

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        for ns in self.ns.values():
            # Anything still running inside (a relay the test did not stop) dies with its namespace.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in self._links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
