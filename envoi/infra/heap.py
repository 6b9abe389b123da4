"""A long-running process's start-up heap taken out of the cyclic garbage collector.

Call settle_heap() once per process, after start-up (imports, settings, pools, the app built), at the
entry point: the relay, each API/tracking worker, each SMTP submission server, inbound, the RQ worker,
the scheduler. What is alive then (~94,000 objects in the relay, ~111,000 in an API worker) lives as
long as the process: frozen, no collection walks it again. Before, each full collection walked all of
it: in a webhook dispatcher 40-100 ms of CPU with the GIL held, several a second (event-loop stalls);
in the relay ~400 young and 3 full collections (~50 ms each) per 12,000 messages, at most ~3 % of its
CPU by the collector's own (wall) clock, now ~0: too little for a CPU A/B to resolve on a shared
machine. The API and SMTP servers collected far less after start-up: their requests' objects die
young, by reference count. The send path makes almost no cyclic garbage (the same objects freed with
or without this), so the young threshold, ~14 times higher, holds nothing longer: the RSS stays as
flat as before. Nothing collectable is frozen (collected first).
docs/benchmarks.md, issue 20, "Start-up heap frozen in every process".
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # allocations between young collections (CPython's default: 700)


def settle_heap() -> None:
    """Collect, freeze what is left, and raise the young generation's threshold."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
