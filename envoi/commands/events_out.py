"""CLI commands of the events_out feature."""

from __future__ import annotations

COMMANDS: list = []  # click commands/groups added to `envoi`
