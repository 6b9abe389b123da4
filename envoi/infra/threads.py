"""Background threads that start on first use and come back after a fork."""

from __future__ import annotations

import threading
from collections.abc import Callable


def kept_alive(thread: threading.Thread | None, target: Callable[[], None], name: str) -> threading.Thread:
    """`thread` if it runs, else a new daemon thread running `target` (first use, or the process was
    forked: threads do not survive a fork, e.g. into gunicorn's workers)."""
    if thread is None or not thread.is_alive():
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
    return thread
