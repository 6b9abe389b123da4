"""HTTP routes of the events_out feature: webhooks, suppression lists, tracking."""

from __future__ import annotations

from envoi.api.resources import suppressions, tracking, webhooks


def add_routes(app, settings, services) -> None:
    """Register this feature's resources on the falcon app."""
    if services.suppressions is not None:
        suppressions.add_routes(app, services.accounts, services.suppressions)
    if services.webhooks is not None:
        webhooks.add_routes(app, services.accounts, services.webhooks)
    if services.tracking is not None:
        tracking.add_routes(app, services.accounts, services.tracking, services.redis, settings.region,
                            settings.trusted_proxies)
