"""Failed-AUTH throttling for SMTP submission, per (client address, login) pair and per client address.

A login is never locked out as such: failures are counted against the pair that made them, so a
brute force from one address cannot lock the right password out from every other address (that
would hand any attacker a denial of service on a known login). A looser cap per client address
(IPv6: per /64) stops one address from trying many logins. Within a pair's allowance each failure
waits twice as long as the one before (backoff()). Counters are fixed windows in Redis, shared by
every `envoi smtp` process of the region. If Redis is unreachable the process falls back to its own
in-memory counters, so brute force never gets a free pass while Redis is down. Logins are hashed in
the key names: no address is written to Redis.
"""

from __future__ import annotations

import hashlib
import logging

from envoi.infra.client_unit import client_unit
from envoi.infra.local_counters import LocalCounters
from envoi.infra.redis import RedisError

log = logging.getLogger(__name__)
MAX_BACKOFF = 8.0  # seconds: the longest a failed AUTH waits before its 535


class AuthThrottle:
    def __init__(self, redis, prefix: str, *, max_per_login: int = 5, max_per_ip: int = 20,
                 window: float = 900.0):
        self.redis = redis
        self.prefix = prefix
        self.max_per_login = max_per_login  # per (client address, login) pair
        self.max_per_ip = max_per_ip
        self.window = max(int(window), 1)
        self._local = LocalCounters(self.window)

    def _keys(self, ip: str, login: str) -> tuple[str, str]:
        digest = hashlib.sha256(login.strip().lower().encode("utf-8", "surrogateescape")).hexdigest()[:24]
        address = client_unit(ip)
        return f"{self.prefix}:ip:{address}", f"{self.prefix}:pair:{address}:{digest}"

    def blocked(self, ip: str, login: str) -> bool:
        """True while this address has used up its failures, or this address has for this login (blocking call)."""
        ip_key, pair_key = self._keys(ip, login)
        counts = self._get([ip_key, pair_key])
        return counts[0] >= self.max_per_ip or counts[1] >= self.max_per_login

    def failed(self, ip: str, login: str) -> int:
        """Count one failed attempt against the address and the pair; return the pair's failures (blocking call)."""
        ip_key, pair_key = self._keys(ip, login)
        self._incr(ip_key)
        return self._incr(pair_key)

    @staticmethod
    def backoff(base: float, failures: int) -> float:
        """Seconds the `failures`-th failed AUTH of a pair waits before its answer: base, 2 base, 4 base..."""
        return min(base * 2 ** max(failures - 1, 0), MAX_BACKOFF) if base > 0 else 0.0

    def reset(self) -> None:
        """Forget all local counters (tests, and operators via a restart)."""
        self._local.forget()

    # storage -----------------------------------------------------------------------------------
    def _get(self, keys: list[str]) -> list[int]:
        if self.redis is not None:
            try:
                values = self.redis.mget(keys)
                remote = [int(v) if v is not None else 0 for v in values]
                return [max(r, self._local.get(k)) for r, k in zip(remote, keys, strict=True)]
            except RedisError as ex:
                log.warning("auth throttle: redis unavailable (%s); using local counters", ex)
        return [self._local.get(k) for k in keys]

    def _incr(self, key: str) -> int:
        if self.redis is not None:
            try:
                pipe = self.redis.pipeline(transaction=True)
                pipe.incr(key)
                pipe.expire(key, self.window, nx=True)
                return int(pipe.execute()[0])
            except RedisError as ex:
                log.warning("auth throttle: redis unavailable (%s); using local counters", ex)
        return self._local.incr(key)
