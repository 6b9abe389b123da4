"""A private Redis primary + replica watched by three Debian `redis-sentinel` processes, on free loopback
ports with their own temp dirs: what a test needs to fail the primary over under a running stack.

The binaries are required (./dev test installs them): a missing one fails the test, never skips it."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from tests.support.processes import free_port

SERVICE = "envoi-test"


def binary(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if Path(p).exists()), None)
    if path is None:
        raise RuntimeError(f"{name} is not installed: apt-get install {name} (./dev test does)")
    return path


class SentinelCluster:
    def __init__(self, tmp: Path, down_after_ms: int = 1000):
        self.tmp, self.down_after_ms = tmp, down_after_ms
        self.redis_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port(), free_port(), free_port()]
        self.procs: dict[str, subprocess.Popen] = {}

    # processes ---------------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.tmp / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> SentinelCluster:
        server = binary("redis-server")
        primary, replica = self.redis_ports
        for port, extra in ((primary, []), (replica, ["--replicaof", "127.0.0.1", str(primary)])):
            data = self.tmp / f"redis-{port}"
            data.mkdir(parents=True)
            self._spawn(f"redis-{port}", [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                          "--appendonly", "no", "--dir", str(data), *extra])
        for port in self.redis_ports:
            self._wait(lambda p=port: redis.Redis(port=p).ping())
        sentinel = binary("redis-sentinel")
        for port in self.sentinel_ports:
            conf = self.tmp / f"sentinel-{port}.conf"  # Sentinel rewrites its config: a file of its own
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.tmp}\n"
                            f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n"
                            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                            f"sentinel failover-timeout {SERVICE} 10000\n"
                            f"sentinel parallel-syncs {SERVICE} 1\n")
            self._spawn(f"sentinel-{port}", [sentinel, str(conf)])
        # Ready when every sentinel knows the replica and the two other sentinels (a failover needs both).
        self._wait(lambda: all(self._sentinel(p).sentinel_slaves(SERVICE) and
                               len(self._sentinel(p).sentinel_sentinels(SERVICE)) == 2
                               for p in self.sentinel_ports), timeout=40)
        self._wait(lambda: redis.Redis(port=replica).info("replication").get("master_link_status") == "up")
        return self

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def __enter__(self) -> SentinelCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # what tests use ---------------------------------------------------------------------------------
    @property
    def sentinels(self) -> str:
        """ENVOI_REDIS_SENTINELS."""
        return ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)

    def url(self, db: int = 0) -> str:
        return f"redis+sentinel://{self.sentinels}/{SERVICE}/{db}"

    def primary_port(self) -> int:
        return int(self._sentinel(self.sentinel_ports[0]).sentinel_get_master_addr_by_name(SERVICE)[1])

    def kill_primary(self) -> int:
        """SIGKILL the primary (no goodbye to anyone); returns its port."""
        port = self.primary_port()
        proc = self.procs[f"redis-{port}"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        return port

    def switch_over(self) -> int:
        """SENTINEL FAILOVER: a planned switch, the old primary stays up and becomes a replica; its port."""
        port = self.primary_port()
        self._sentinel(self.sentinel_ports[0]).execute_command("SENTINEL FAILOVER", SERVICE)
        return port

    def wait_failover(self, old_port: int, timeout: float = 60) -> int:
        """Until every sentinel names another primary, that one says it is a master and the old one, if it
        is still up, has been turned into a replica (until then, clients still connected to it write there:
        Sentinel's split-brain window); the new primary's port."""
        def done():
            ports = {self._sentinel(p).sentinel_get_master_addr_by_name(SERVICE)[1] for p in self.sentinel_ports}
            if len(ports) != 1 or int(next(iter(ports))) == old_port:
                return None
            port = int(next(iter(ports)))
            if redis.Redis(port=port).info("replication")["role"] != "master":
                return None
            old_alive = self.procs[f"redis-{old_port}"].poll() is None
            if old_alive and redis.Redis(port=old_port, socket_timeout=2).info("replication")["role"] != "slave":
                return None
            return port
        return self._wait(done, timeout)

    def output(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}" for log in self.tmp.glob("*.log"))

    @staticmethod
    def _sentinel(port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, decode_responses=True)

    def _wait(self, check, timeout: float = 20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if value := check():
                    return value
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"Redis/Sentinel not ready after {timeout}s:\n{self.output()}")
