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


def test_an_ipv6_client_is_counted_by_its_64_so_rotating_addresses_does_not_reset_the_count():
    dead = redis_infra.client("redis://127.0.0.1:1/0")
    throttle = LoginThrottle(dead, "test6", max_per_email=100, max_per_ip=3)
    for n in range(3):
        throttle.check(f"user{n}@example.test", f"2001:db8:1:2::{n + 1}")
        throttle.failed(f"user{n}@example.test", f"2001:db8:1:2::{n + 1}")
    with pytest.raises(LoginThrottled):
        throttle.check("other@example.test", "2001:db8:1:2:ffff::9")  # same /64
    throttle.check("other@example.test", "2001:db8:1:3::1")  # the next /64 is another client
