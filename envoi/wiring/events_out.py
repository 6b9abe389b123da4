"""Wiring for events_out: webhooks (outbox writer + doorbell), suppressions (relay hook), tracking."""

from __future__ import annotations

from envoi.mta.tracking import Tracking
from envoi.suppression.service import Suppressions
from envoi.webhooks.service import Webhooks


def wire(services) -> None:
    """Attach this feature's services to `services` (called once by runtime.build)."""
    settings = services.settings
    services.suppressions = Suppressions(services.db, settings.public_url)
    services.webhooks = Webhooks(settings, services.db, services.sealer, services.redis)
    services.tracking = Tracking(services.db, services.events, settings.secret_key, settings.public_url,
                                 suppressions=services.suppressions)
    # Inside the events' transaction: webhook outbox rows, complaint suppressions.
    services.events.writers.append(services.webhooks.events_writer)
    services.events.writers.append(services.suppressions.events_writer)
    # After commit: wake the webhook dispatcher.
    services.events.listeners.append(services.webhooks.events_listener)
    services.intake.renderers.append(services.tracking.render)
    _metrics(services)


def _metrics(services) -> None:
    from prometheus_client import Counter, Gauge, Histogram

    registry = services.metrics.registry
    attempts = Counter("envoi_webhook_attempts_total", "Webhook delivery attempts by outcome"
                       " (delivered|retry|rejected|failed)", ["outcome"], registry=registry)
    seconds = Histogram("envoi_webhook_attempt_seconds", "Time of one webhook POST",
                        buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=registry)
    services.webhooks.backlog_gauge = Gauge("envoi_webhook_backlog", "Webhook deliveries due and not in flight",
                                     registry=registry)

    def observe(outcome: str, duration: float) -> None:
        attempts.labels(outcome).inc()
        seconds.observe(duration)

    services.webhooks.observe = observe


def relay_options(services) -> dict:
    """Extra keyword arguments for the relay engine (hooks this feature plugs in)."""
    return {"suppressions": services.suppressions}


def periodic(services) -> list[tuple]:
    """Housekeeping for `envoi scheduler`: (name, every seconds, function)."""
    return [("purge expired webhook deliveries", 3600, services.webhooks.purge_expired)]
