"""When to try again: a configurable schedule with jitter, honouring the remote's hint."""

from __future__ import annotations

import random


def next_delay(schedule: tuple[float, ...], attempts_done: int, hint: float | None = None,
               rng: random.Random | None = None) -> float:
    """Delay before the next attempt, after `attempts_done` attempts (1 = the first just failed)."""
    rng = rng or random
    base = schedule[min(max(attempts_done, 1), len(schedule)) - 1]
    # Jitter (±10%) spreads retries so a recovering destination is not hit by a thundering herd.
    delay = base * rng.uniform(0.9, 1.1)
    if hint is not None:
        delay = max(delay, min(hint, 6 * 3600))
    return delay
