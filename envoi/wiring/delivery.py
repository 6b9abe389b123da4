"""Wiring for the delivery feature (see its issue)."""

from __future__ import annotations


def wire(services) -> None:
    """Attach this feature's services to `services` (called once by runtime.build)."""
    from envoi.mta.submission.server import Submission

    # SMTP submission (envoi smtp): listeners are opened by the command, not here.
    services.submission = Submission.from_settings(services.settings, services.intake, services.accounts,
                                                   services.redis)


def relay_options(services) -> dict:
    """Extra keyword arguments for the relay engine (hooks this feature plugs in)."""
    return {}
