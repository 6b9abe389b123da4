"""The inbound MX's poster: a thread that posts the routes' outbox (forward(url), store(notify=url)).

Woken at once after each received message, and every second regardless, so retries come due and
posts left by a crashed process (their lease ran out) are taken again: the outbox rows in Postgres are
the truth, the wake-up only saves the wait.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("envoi.routes")


class Poster:
    def __init__(self, post_due, poll: float = 1.0):
        self.post_due = post_due  # Receiving.post_due
        self.poll = poll
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="envoi-inbound-poster", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                posted = self.post_due()
            except Exception:
                log.exception("posting the routes' outbox failed; trying again shortly")
                posted = 0
            if not posted:
                self._wake.wait(self.poll)
                self._wake.clear()
