"""The dispatcher's event-loop stall diagnosis (ENVOI_WEBHOOK_TRACE: webhooks.stalls); the stalls found were full
collections walking the start-up heap, now frozen (envoi.infra.heap, tests/unit/infra/test_heap.py)."""

from __future__ import annotations

import asyncio
import logging
import time

from envoi.webhooks.stalls import Stalls


def stalled(caplog, work) -> str:
    async def main():
        stop = asyncio.Event()
        probe = asyncio.create_task(Stalls(0.1).probe(stop))
        await asyncio.sleep(0.1)
        work()
        await asyncio.sleep(0.1)
        stop.set()
        await probe

    with caplog.at_level(logging.WARNING, logger="envoi.webhooks.stalls"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "event loop stalled" in r.getMessage()]
    assert lines
    return max(lines, key=lambda line: int(line.split("stalled ")[1].split(" ms")[0]))  # a busy machine may add others


def test_a_blocking_call_on_the_loop_is_logged_with_its_stack_and_little_cpu(caplog):
    def blocking_call_on_the_loop():
        time.sleep(0.4)

    line = stalled(caplog, blocking_call_on_the_loop)
    assert int(line.split("stalled ")[1].split(" ms")[0]) >= 300
    assert int(line.split("loop thread CPU ")[1].split(" ms")[0]) < 150  # it waited: no Python work
    assert "blocking_call_on_the_loop" in line  # the watcher caught where


def test_python_work_on_the_loop_is_logged_with_its_cpu(caplog):
    def busy_on_the_loop():
        deadline = time.thread_time() + 0.3
        while time.thread_time() < deadline:
            pass

    line = stalled(caplog, busy_on_the_loop)
    assert int(line.split("loop thread CPU ")[1].split(" ms")[0]) >= 250
