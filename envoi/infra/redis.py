"""Redis: wake-ups, counters and the live stream. Never the source of truth for a message."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from envoi.infra.threads import kept_alive

log = logging.getLogger(__name__)
RedisError = redis.RedisError
Redis = redis.Redis  # the client type, for annotations outside infra


SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379


def client(url: str, *, socket_timeout: float | None = 5,
           on_unavailable: Callable[[], None] | None = None) -> redis.Redis:
    """A client for `url`: redis:// (rediss://, unix://) as redis-py reads it, or
    redis+sentinel://[user:password@]host:port,host:port/service[/db][?sentinel_password=...], whose
    client asks the sentinels for the service's primary at each (re)connect, so it follows a failover.
    socket_timeout: None for a client that blocks longer (RQ's workers wait in BLPOP).
    on_unavailable: called when a command fails for want of Redis (the store-errors metric)."""
    options = {"socket_timeout": socket_timeout, "socket_connect_timeout": 2, "health_check_interval": 30}
    if urlsplit(url).scheme != SENTINEL_SCHEME:
        conn = _Counted.from_url(url, **options)
        conn.on_unavailable = on_unavailable
        return conn
    target = SentinelUrl.parse(url)
    sentinel_options = {"socket_timeout": 2, "socket_connect_timeout": 2}
    if target.sentinel_password:
        sentinel_options["password"] = target.sentinel_password
    sentinels = Sentinel(target.sentinels, sentinel_kwargs=sentinel_options)
    # A write that reaches a demoted primary (ReadOnlyError) drops the connection and rediscovers: redis-py's
    # SentinelManagedConnection; Sentinel also disconnects the clients of an instance it reconfigures.
    conn = sentinels.master_for(target.service, redis_class=_Counted, db=target.db, username=target.username,
                                password=target.password, **options)
    conn.on_unavailable = on_unavailable
    return conn


class _Counted(redis.Redis):
    on_unavailable: Callable[[], None] | None = None

    def execute_command(self, *args, **options):
        try:
            return super().execute_command(*args, **options)
        except (redis.ConnectionError, redis.TimeoutError):
            if self.on_unavailable:
                self.on_unavailable()
            raise


class SentinelUrl:
    """A redis+sentinel:// URL: the sentinels to ask, the service (Sentinel's master name) and the db."""

    def __init__(self, sentinels: list[tuple[str, int]], service: str, db: int = 0, username: str | None = None,
                 password: str | None = None, sentinel_password: str | None = None):
        self.sentinels, self.service, self.db = sentinels, service, db
        self.username, self.password, self.sentinel_password = username, password, sentinel_password

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        parts = urlsplit(url)
        credentials, _, hosts = parts.netloc.rpartition("@")
        username, _, password = credentials.partition(":")
        sentinels = [hostport(item) for item in hosts.split(",") if item.strip()]
        path = [unquote(p) for p in parts.path.split("/") if p]
        if not sentinels or not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
            raise ValueError(f"not a redis+sentinel://host:port[,host:port]/service[/db] URL: {where(url)}")
        query = parse_qs(parts.query)
        return cls(sentinels, path[0], int(path[1]) if len(path) == 2 else 0, unquote(username) or None,
                   unquote(password) or None, (query.get("sentinel_password") or [None])[0])

    def url(self) -> str:
        credentials = ""
        if self.password or self.username:
            credentials = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        hosts = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.sentinels)
        query = f"?sentinel_password={quote(self.sentinel_password, safe='')}" if self.sentinel_password else ""
        return f"{SENTINEL_SCHEME}://{credentials}{hosts}/{quote(self.service, safe='')}/{self.db}{query}"


def hostport(item: str) -> tuple[str, int]:
    """host:port ([v6]:port; the port defaults to Sentinel's 26379)."""
    item = item.strip()
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        return host, int(rest.lstrip(":") or SENTINEL_PORT)
    host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    return host, int(port or SENTINEL_PORT)


def sentinel_url(sentinels: str, service: str, base_url: str = "") -> str:
    """The redis+sentinel:// URL of ENVOI_REDIS_SENTINELS ("host:port,host:port") and its service, with the
    db and credentials of `base_url` (a redis:// URL) if it has them."""
    base = urlsplit(base_url) if base_url else None
    db = 0
    if base is not None and base.path.strip("/").isdigit():
        db = int(base.path.strip("/"))
    return SentinelUrl([hostport(item) for item in sentinels.split(",") if item.strip()], service, db,
                       unquote(base.username) if base and base.username else None,
                       unquote(base.password) if base and base.password else None).url()


def where(url: str) -> str:
    """host:port/path of a Redis URL (several hosts for Sentinel's), without its credentials."""
    parts = urlsplit(url)
    return f"{parts.netloc.rpartition('@')[2] or 'localhost'}{parts.path}"


class Doorbell:
    """Tells the relay that new work is due. Losing a ring only delays work until the next poll.

    ring() never waits on Redis: a ringer thread does, and rings asked for while one is on its way
    become one (under load, each intake commit used to pay a Redis round trip: ~4% of its CPU).

    `carrier(key)`, when given, is asked first to make the ring in a round trip it makes anyway (the live
    stream's publish of the same commit's events: envoi.events.stream.LiveStream.carry_ring); it returns
    False when it has none coming, and the ringer thread rings."""

    def __init__(self, conn: redis.Redis, key: str, carrier: Callable[[str], bool] | None = None):
        self.conn = conn
        self.key = key
        self.carrier = carrier
        self._cond = threading.Condition()
        self._wanted = False
        self._ringer: threading.Thread | None = None

    def ring(self) -> None:
        if self.carrier is not None and self.carrier(self.key):
            return
        with self._cond:
            self._wanted = True
            self._ringer = kept_alive(self._ringer, self._ring_loop, "doorbell")
            self._cond.notify()

    def _ring_loop(self) -> None:
        while True:
            with self._cond:
                while not self._wanted:
                    self._cond.wait()
                self._wanted = False
            self.ring_now()

    def ring_now(self) -> None:
        try:
            pipe = self.conn.pipeline(transaction=False)
            pipe.lpush(self.key, 1)
            pipe.ltrim(self.key, 0, 0)  # one pending ring is enough
            pipe.execute()
        except redis.RedisError as ex:
            log.warning("doorbell: %s (the relay will find the work on its next poll)", ex)

    def wait(self, timeout: float) -> bool:
        try:
            return self.conn.blpop([self.key], timeout=timeout) is not None
        except redis.RedisError as ex:
            log.warning("doorbell: %s", ex)
            return False


class Generation:
    """A counter every process reads and any process bumps: how a change made in one process (a revoked
    API key) reaches the caches of all the others on their very next read, not within a TTL.

    PERF: reading it was a Redis GET per API request (~3 % of a send's API CPU). A bump also publishes
    on the counter's channel, which each process watches on a connection of its own: current() looks for a
    pending message with a non-blocking read (no round trip) and reads the counter again only after one.
    Redis queues the message to the watchers while it runs the bump, before the bumping process hears
    back, so a request that starts after a bump returned sees it, as with the GET. A lost watch
    connection falls back to the GET until it is subscribed again, and the counter is read again at
    least every RECHECK seconds anyway: a bump by a process that only INCRs (a version before this one,
    during an upgrade) or a watch that silently stopped receiving is seen within that.

    current() is None when Redis cannot say: callers then skip their cache rather than trust it."""

    RECHECK = 1.0

    def __init__(self, conn: redis.Redis, key: str, *, watch: bool = True):
        self.conn = conn
        self.key = key
        self.watch = watch
        self._lock = threading.Lock()
        self._watcher = None  # a connection subscribed to the channel `key`, of this process
        self._poller = None
        self._pid = 0
        self._value = 0
        self._read_at = 0.0
        self._retry_at = 0.0  # after a failed watch: GETs until then (Redis down: one timeout per read, not two)
        # Channels are server-wide, not per db: two regions' counters on one server stay apart.
        self.channel = f"{key}@{conn.connection_pool.connection_kwargs.get('db', 0)}"

    def current(self) -> int | None:
        if self.watch and time.monotonic() >= self._retry_at:
            with self._lock:
                try:
                    return self._watched()
                except (redis.RedisError, OSError) as ex:
                    log.warning("generation %s: watch lost: %s (reading the counter)", self.key, ex)
                    self._drop()
                    self._retry_at = time.monotonic() + self.RECHECK
        return self._read()

    def _read(self) -> int | None:
        try:
            return int(self.conn.get(self.key) or 0)
        except redis.RedisError as ex:
            log.warning("generation %s: %s (reading through)", self.key, ex)
            return None

    def _watched(self) -> int:
        now = time.monotonic()
        if self._watcher is None or self._pid != os.getpid():
            self._watcher = None  # (a forked child's copy belongs to its parent: never read it here)
            watcher = self.conn.connection_pool.make_connection()
            watcher.connect()
            watcher.send_command("SUBSCRIBE", self.channel)
            watcher.read_response(push_request=True)  # RESP3 delivers it as a push
            # Subscribed before reading: a bump from here on is in the counter read below or a message.
            poller = select.poll()
            poller.register(watcher._sock, select.POLLIN)
            self._watcher, self._poller, self._pid, self._read_at = watcher, poller, os.getpid(), 0.0
        bumped = False
        # poll() first: ~1 us where redis-py's can_read() costs tens (socket timeouts, an exception). The
        # parser's buffer is empty here, as the draining below always ends with can_read() False.
        if self._poller.poll(0):
            while self._watcher.can_read(timeout=0):
                self._watcher.read_response(push_request=True)
                bumped = True
        if bumped or now - self._read_at >= self.RECHECK:
            value = int(self.conn.get(self.key) or 0)
            if not bumped and self._read_at and value != self._value:
                log.info("generation %s: changed without a message (an older process's bump)", self.key)
            self._value, self._read_at = value, now
        return self._value

    def _drop(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                watcher.disconnect()

    def bump(self) -> None:
        try:
            pipe = self.conn.pipeline(transaction=False)
            pipe.incr(self.key)
            pipe.publish(self.channel, b"1")
            pipe.execute()
        except redis.RedisError as ex:
            log.warning("generation %s: %s (other processes' caches expire on their own)", self.key, ex)


# KEYS: the counters; ARGV: n, then per key its limit (-1: none) and its lifetime in seconds. Adds n to
# every counter only when none would pass its limit; returns 0, or the 1-based index of the first
# counter that refused (nothing added).
_ADD_WITHIN = """
local n = tonumber(ARGV[1])
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i])
  if limit >= 0 and tonumber(redis.call('GET', KEYS[i]) or '0') + n > limit then return i end
end
for i = 1, #KEYS do
  redis.call('INCRBY', KEYS[i], n)
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[2 * i + 1]))
end
return 0
"""


class BoundedCounters:
    """Counters several processes add to with an atomic check-and-add: n is added to all of a set of
    counters, or to none when one of them would pass its limit (a quota per day and per month)."""

    def __init__(self, conn: redis.Redis):
        self.conn = conn
        self._sha = hashlib.sha1(_ADD_WITHIN.encode()).hexdigest()

    def add_within(self, counters: list[tuple[str, int | None, int]], n: int) -> int | None:
        """counters: (key, limit or None, lifetime in seconds). None when n was added to every counter,
        else the index of the first one whose limit refused it. Raises RedisError."""
        args: list = [n]
        for _, limit, ttl in counters:
            args += [-1 if limit is None else limit, ttl]
        keys = [key for key, _, _ in counters]
        # PERF: EVALSHA straight through execute_command (redis-py's Script object doubled the CPU of a
        # call, ~85 µs against ~45 µs: it runs on every accept with billing on).
        try:
            refused = self.conn.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:  # a restarted or flushed Redis: load it once more
            refused = self.conn.execute_command("EVAL", _ADD_WITHIN, len(keys), *keys, *args)
        return None if refused == 0 else int(refused) - 1

    def subtract(self, keys: list[str], n: int) -> None:
        """Give n back to each counter (an accept that failed to commit). Raises RedisError."""
        pipe = self.conn.pipeline(transaction=False)
        for key in keys:
            pipe.decrby(key, n)
        pipe.execute()

    def get(self, key: str) -> int:
        return int(self.conn.get(key) or 0)
