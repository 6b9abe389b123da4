"""Per-feature route tables: each module has add_routes(app, settings, services)."""
