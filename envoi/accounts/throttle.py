"""Failed-login throttling for account users, per email and per client address.

Fixed-window counters in Redis (shared by every API process), like the SMTP AUTH throttle
(envoi/mta/submission/throttle.py), with in-process counters while Redis is unreachable so a brute
force never gets a free pass. Failures count for unknown emails too, and the check runs before the
password is looked at: being throttled says nothing about whether an email exists. Emails are hashed
in the key names.
"""

from __future__ import annotations

import hashlib
import logging

from envoi.accounts.errors import LoginThrottled
from envoi.infra.client_unit import client_unit
from envoi.infra.local_counters import LocalCounters
from envoi.infra.redis import RedisError

log = logging.getLogger(__name__)


class LoginThrottle:
    def __init__(self, redis, prefix: str, *, max_per_email: int = 5, max_per_ip: int = 20,
                 window: float = 900.0):
        self.redis = redis
        self.prefix = prefix
        self.max_per_email = max_per_email
        self.max_per_ip = max_per_ip
        self.window = max(int(window), 1)
        self._local = LocalCounters(self.window)

    def _keys(self, email: str, ip: str | None) -> tuple[str, str]:
        digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:24]
        return f"{self.prefix}:email:{digest}", f"{self.prefix}:ip:{client_unit(ip)}"  # IPv6: per /64

    def check(self, email: str, ip: str | None) -> None:
        """Raise LoginThrottled while this email or this address has used up its failures."""
        email_key, ip_key = self._keys(email, ip)
        by_email, by_ip = self._get([email_key, ip_key])
        if by_email >= self.max_per_email or by_ip >= self.max_per_ip:
            raise LoginThrottled()

    def failed(self, email: str, ip: str | None) -> None:
        for key in self._keys(email, ip):
            self._incr(key)

    def succeeded(self, email: str) -> None:
        """A right password clears the email's count (the address's stays: it may be trying many)."""
        key = self._keys(email, None)[0]
        self._local.forget(key)
        try:
            self.redis.delete(key)
        except RedisError as ex:
            log.warning("login throttle: redis unavailable (%s)", ex)

    def _get(self, keys: list[str]) -> list[int]:
        local = [self._local.get(k) for k in keys]
        try:
            remote = [int(v) if v is not None else 0 for v in self.redis.mget(keys)]
        except RedisError as ex:
            log.warning("login throttle: redis unavailable (%s); using local counters", ex)
            return local
        return [max(r, n) for r, n in zip(remote, local, strict=True)]

    def _incr(self, key: str) -> None:
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.incr(key)
            pipe.expire(key, self.window, nx=True)
            pipe.execute()
            return
        except RedisError as ex:
            log.warning("login throttle: redis unavailable (%s); using local counters", ex)
        self._local.incr(key)
