"""HTTP routes of the logs feature: live events (SSE), message trace, stats and tags.

The events API itself (/v3/{domain}/events and its paging URLs) is registered in app.py.
"""

from __future__ import annotations

from envoi.api.resources.events import LiveEvents, MessageTrace, StatsTotal, Tags


def add_routes(app, settings, services) -> None:
    """Register this feature's resources on the falcon app."""
    if services.stream is not None:
        live = LiveEvents(services.accounts, services.stream)
        app.add_route("/v3/{domain}/events/live", live)
        app.add_route("/v3/events/live", live)  # every domain of the caller's account
    app.add_route("/v3/{domain}/messages/{message_id}/trace", MessageTrace(services.accounts, services.events))
    if services.stats is not None:
        app.add_route("/v3/{domain}/stats/total", StatsTotal(services.accounts, services.stats))
        tags = Tags(services.accounts, services.stats, settings.public_url)
        app.add_route("/v3/{domain}/tags", tags)
        app.add_route("/v3/{domain}/tags/{tag}", tags, suffix="item")
        app.add_route("/v3/{domain}/tags/{tag}/stats", tags, suffix="stats")
