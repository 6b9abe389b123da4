"""Retry schedule: jitter, the last delay repeats, remote hints honoured (capped)."""

import random

from envoi.infra.settings import Settings
from envoi.mta.delivery import retry


def test_default_schedule_is_minutes_then_hourly():
    schedule = Settings().retry_schedule
    assert schedule[0] == 60 and schedule[-1] == 3600
    rng = random.Random(1)
    delays = [retry.next_delay(schedule, n, rng=rng) for n in range(1, 20)]
    assert 54 <= delays[0] <= 66
    assert all(3240 <= d <= 3960 for d in delays[len(schedule):])  # hourly, ±10%


def test_jitter_spreads_retries():
    rng = random.Random(2)
    delays = {round(retry.next_delay((600,), 1, rng=rng)) for _ in range(50)}
    assert len(delays) > 20 and min(delays) >= 540 and max(delays) <= 660


def test_hint_is_honoured_and_capped():
    assert retry.next_delay((60,), 1, hint=900, rng=random.Random(3)) == 900
    assert retry.next_delay((60,), 1, hint=10, rng=random.Random(3)) < 70  # never sooner than the schedule
    assert retry.next_delay((60,), 1, hint=10**6, rng=random.Random(3)) == 6 * 3600
