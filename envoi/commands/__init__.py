"""Per-feature CLI commands, registered on the `envoi` group in envoi.cli."""
