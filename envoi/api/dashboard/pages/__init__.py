"""Dashboard pages, one module per area; each reads the same services as the API resources."""
