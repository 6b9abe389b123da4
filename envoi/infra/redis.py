"""Redis: wake-ups, counters and the live stream. Never the source of truth for a message."""

from __future__ import annotations

import logging

import redis

log = logging.getLogger(__name__)
RedisError = redis.RedisError


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30)


class Doorbell:
    """Tells the relay that new work is due. Losing a ring only delays work until the next poll."""

    def __init__(self, conn: redis.Redis, key: str):
        self.conn = conn
        self.key = key

    def ring(self) -> None:
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
