"""CLI commands beyond envoi.cli's own, one module per process or noun, registered on the `envoi` group there."""
