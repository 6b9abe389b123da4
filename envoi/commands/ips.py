"""CLI commands of the ips feature."""

from __future__ import annotations

COMMANDS: list = []  # click commands/groups added to `envoi`
