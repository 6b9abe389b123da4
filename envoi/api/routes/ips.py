"""HTTP routes of the ips feature."""

from __future__ import annotations


def add_routes(app, settings, services) -> None:
    """Register this feature's resources on the falcon app."""
