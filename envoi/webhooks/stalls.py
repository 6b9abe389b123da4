"""ENVOI_WEBHOOK_TRACE: what stalled the dispatcher's event loop (a stall holds every tenant's requests).

`Stalls.probe` ticks on the loop; a watcher thread samples the loop thread's stack while a tick is
overdue, and gc.callbacks time the collector. A stall is logged with the loop thread's own CPU time over
it (≈ the stall: Python work on the loop; ≈ 0: the process waited for a CPU, or another of its threads
held the GIL: then the process's CPU over it is the larger), the collector's time over it, and the
stacks the watcher caught (none: the loop thread held the GIL throughout, e.g. in a C call or a
collection). Off by default: the thread and the
callbacks cost every process. Every SUMMARY seconds the collector's passes are logged too.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import sys
import threading
import time

log = logging.getLogger("envoi.webhooks.stalls")
TICK = 0.01  # seconds between the probe's ticks
SAMPLE = 0.005  # seconds between the watcher's looks
SUMMARY = 10.0  # seconds between the collector's summaries


def _current_frames() -> dict:
    """sys._current_frames() with the collector off: on CPython 3.11 a collection started by its own
    allocations (one frame object per thread) that frees a threading.local takes the runtime's thread-list
    lock it already holds, and the process hangs (CPython gh-106883; seen here in a test process with
    ~120 threads)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        if enabled:
            gc.enable()


class Stalls:
    def __init__(self, threshold: float):
        self.threshold = threshold
        self.beat = time.monotonic()
        self.gc_seconds = 0.0  # total, by the callbacks
        self.gc_worst = (0.0, -1, 0)  # (seconds, generation, collected) of the longest pass since the last read
        self._passes = [0, 0, 0]  # collections by generation since the last summary
        self._passes_seconds = 0.0
        self._passes_longest = 0.0
        self._gc_started = 0.0
        self._stacks: collections.Counter = collections.Counter()
        self._samples = 0
        self._lock = threading.Lock()
        self._thread_id = 0

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_started
        self.gc_seconds += took
        self._passes[min(info.get("generation", 0), 2)] += 1
        self._passes_seconds += took
        self._passes_longest = max(self._passes_longest, took)
        if took > self.gc_worst[0]:
            self.gc_worst = (took, info.get("generation", -1), info.get("collected", 0))

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(SAMPLE):
            if time.monotonic() - self.beat < max(TICK * 3, self.threshold / 2):
                continue
            frame = _current_frames().get(self._thread_id)
            stack = []
            while frame is not None and len(stack) < 12:
                code = frame.f_code
                stack.append(f"{code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno} {code.co_name}")
                frame = frame.f_back
            with self._lock:
                self._samples += 1
                self._stacks[" < ".join(stack)] += 1

    async def probe(self, stop: asyncio.Event) -> None:
        self._thread_id = threading.get_ident()
        halt = threading.Event()
        threading.Thread(target=self._watch, args=(halt,), name="webhook-stall-watch", daemon=True).start()
        gc.callbacks.append(self._gc)
        summary = time.monotonic()
        try:
            while not stop.is_set():
                self.beat = started = time.monotonic()
                cpu, process, gc_before = time.thread_time(), time.process_time(), self.gc_seconds
                await asyncio.sleep(TICK)
                late = time.monotonic() - started - TICK
                if late > self.threshold:
                    self._report(late, time.thread_time() - cpu, time.process_time() - process,
                                 self.gc_seconds - gc_before)
                else:
                    with self._lock:
                        self._stacks.clear()
                        self._samples = 0
                self.gc_worst = (0.0, -1, 0)
                if started - summary >= SUMMARY:
                    self._summary(started - summary)
                    summary = started
        finally:
            halt.set()
            gc.callbacks.remove(self._gc)

    def _summary(self, seconds: float) -> None:
        log.warning("GC over %.0f s: %d / %d / %d passes of generation 0 / 1 / 2, %.0f ms, longest %.0f ms", seconds,
                    *self._passes, self._passes_seconds * 1000, self._passes_longest * 1000)
        self._passes, self._passes_seconds, self._passes_longest = [0, 0, 0], 0.0, 0.0

    def _report(self, late: float, cpu: float, process: float, gc_took: float) -> None:
        with self._lock:
            stacks, samples = self._stacks.most_common(3), self._samples
            self._stacks.clear()
            self._samples = 0
        worst, generation, collected = self.gc_worst
        log.warning("event loop stalled %.0f ms: loop thread CPU %.0f ms (process %.0f ms), GC %.0f ms (longest pass"
                    " %.0f ms, gen %d, %d collected), %d stack samples%s", late * 1000, cpu * 1000, process * 1000,
                    gc_took * 1000, worst * 1000,
                    generation, collected, samples,
                    "".join(f" | {n}x {stack}" for stack, n in stacks))
