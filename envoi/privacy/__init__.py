"""Data-subject requests: export and erasure of everything held about one address."""
