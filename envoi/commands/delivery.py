"""CLI commands of the delivery feature."""

from __future__ import annotations

COMMANDS: list = []  # click commands/groups added to `envoi`
