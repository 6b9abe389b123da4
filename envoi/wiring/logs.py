"""Wiring for the logs feature: live stream, stats/tag rollups, retention and partition upkeep."""

from __future__ import annotations

from envoi.events.service import PLAN_RETENTION, Retention
from envoi.events.stats import Stats
from envoi.events.stream import LiveStream


def wire(services) -> None:
    """Attach this feature's services to `services` (called once by runtime.build)."""
    settings = services.settings
    events = services.events
    events.retention = Retention(settings.event_retention, {**PLAN_RETENTION, **dict(settings.event_retention_plans)})
    services.stats = Stats(services.db)
    events.writers.append(services.stats.rollup)  # same transaction as the events
    events.listeners.append(services.stats.fold_soon)  # pending counts -> hourly rollup, every 2 s
    services.stream = LiveStream(services.redis, settings.region, max_clients=settings.stream_max_clients,
                                 max_seconds=settings.stream_max_seconds)
    events.listeners.append(services.stream.publish)  # after commit
    # Partitions: create the missing day's partition (rows wait in the default partition meanwhile)
    # and purge past retention at most hourly, from whichever process records events.
    events.listeners.append(events.maintain_soon)


def relay_options(services) -> dict:
    """Extra keyword arguments for the relay engine (hooks this feature plugs in)."""
    return {}


def periodic(services) -> list[tuple]:
    """Jobs for `envoi scheduler`: partitions ahead, retention purge, stats folding and coarsening."""
    return [("events: partitions and retention", 3600, services.events.maintain),
            ("stats: fold pending rollups", 60, services.stats.fold),
            ("stats: hourly buckets into days, daily into months", 86400, services.stats.coarsen)]
