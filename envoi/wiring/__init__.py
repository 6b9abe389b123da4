"""Per-feature wiring: each module attaches its services to the region\x27s Services."""
