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


def relay_options(services) -> dict:
    """Extra keyword arguments for the relay engine (hooks this feature plugs in)."""
    return {"suppressions": services.suppressions}


def periodic(services) -> list[tuple]:
    """Housekeeping for `envoi scheduler`: (name, every seconds, function)."""
    return [("purge expired webhook deliveries", 3600, services.webhooks.purge_expired)]
