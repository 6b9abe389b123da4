"""A long-running process's start-up heap taken out of the cyclic garbage collector.

Call settle_heap() once per process, after start-up (imports, settings, pools, the app built), at the
entry point: the relay, each API/tracking worker, each SMTP submission server, inbound, the RQ worker,
the scheduler. What is alive then (~94,000 objects in the relay, ~111,000 in an API worker) lives as
long as the process: frozen, no collection walks it again. Before, each full collection walked all of
it: in a webhook dispatcher 40-100 ms of CPU with the GIL held, several a second (event-loop stalls);
in the relay draining a queue ~120 young and one full collection (30-40 ms) every ~3 s, ~3 % of its
CPU, which this takes back (0.58 against 0.60 ms per message). The API and SMTP servers collected far
less after start-up (a request's objects die young): no change measurable there. Nothing collectable is
frozen (collected first); a request's objects still die by reference count and its cycles in the young
passes, which at the higher threshold run ~14 times less often, the RSS as flat as before.
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
