"""Run the real relay engine in a background thread for integration tests."""

from __future__ import annotations

import asyncio
import threading
import time

from envoi.mta.delivery.engine import Relay
from envoi.mta.delivery.mx import MxResolver


class RelayThread:
    def __init__(self, services, settings, dns_timeout: float = 2.0, **relay_kwargs):
        self.services = services
        self.settings = settings
        self.dns_timeout = dns_timeout  # the MX resolver's, per lookup
        self.relay_kwargs = relay_kwargs  # hooks (egress=, suppressions=, …) passed to the Relay
        # Without a doorbell the relay sleeps between idle claims and only sees a stop after the sleep:
        # every test's teardown waited for it; here the wait ends at once when the relay is told to stop.
        # Idle polls every 0.1 s (0.5 s before): a test that queues mail (or waits out a retry) and then
        # waits for the sink waited ~0.25 s per delivery round for the next claim, a few hundred times in
        # the suite. The claim loop is unchanged (Postgres is the queue); it only claims sooner.
        self._stopping = threading.Event()
        self.relay_kwargs.setdefault("wait_for_work", lambda timeout: self._stopping.wait(0.1))
        self.loop = asyncio.new_event_loop()
        self.relay: Relay | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.relay = Relay(self.settings, self.services.db, self.services.accounts, self.services.sealer,
                           events=self.services.events,
                           resolver=MxResolver(self.settings.dns_resolver, timeout=self.dns_timeout),
                           metrics=self.services.metrics, **self.relay_kwargs)
        self.loop.run_until_complete(self.relay.run())

    def __enter__(self) -> RelayThread:
        self.thread.start()
        while self.relay is None:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()
        self.loop.call_soon_threadsafe(self.relay.stop)
        self.thread.join(timeout=30)


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.02):
    """predicate()'s first truthy value, asked every `interval` s (the wait is across threads and processes,
    no event to block on); 0.02 s: at 0.1 s a wait overran what it waited for by ~50 ms on average, a few
    hundred times in the suite. Predicates that are costly to ask pass their own interval."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def relay_settings(settings, sink, dns, **changes):
    """Settings for a relay that finds MX hosts on the test DNS server and delivers to the sink."""
    return settings.replace(**{"remote_smtp_port": sink.smtp_port, "dns_resolver": ("127.0.0.1", dns.port),
                               "smtp_timeout": 5, **changes})
