"""Running a server's event loop: uvloop when installed (its loop and TLS are compiled; ~1.5x
asyncio's for the relay's many sessions and for TLS submission), asyncio otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine


def run(main: Coroutine) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
