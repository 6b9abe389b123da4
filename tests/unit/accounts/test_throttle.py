"""The login throttle keeps counting in the process while Redis is unreachable."""

import pytest

from envoi.accounts.errors import LoginThrottled
from envoi.accounts.throttle import LoginThrottle
from envoi.infra import redis as redis_infra


def test_redis_down_falls_back_to_local_counters():
    dead = redis_infra.client("redis://127.0.0.1:1/0")  # port 1 refuses at once
    throttle = LoginThrottle(dead, "test", max_per_email=3, max_per_ip=100)
    for _ in range(3):
        throttle.check("a@example.test", "192.0.2.1")
        throttle.failed("a@example.test", "192.0.2.1")
    with pytest.raises(LoginThrottled):
        throttle.check("A@example.test ", "192.0.2.9")  # the same email, however written, from anywhere
    throttle.check("b@example.test", "192.0.2.1")
    throttle.succeeded("a@example.test")
    throttle.check("a@example.test", "192.0.2.1")
