"""Wiring for the delivery feature (see its issue)."""

from __future__ import annotations


def wire(services) -> None:
    """Attach this feature's services to `services` (called once by runtime.build)."""


def relay_options(services) -> dict:
    """Extra keyword arguments for the relay engine (hooks this feature plugs in)."""
    return {}
