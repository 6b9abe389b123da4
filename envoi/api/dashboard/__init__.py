"""The web dashboard: server-rendered pages (Jinja2) on the same falcon app as the API, reading the same
services. `routes()` is its part of the route table (envoi/api/app.py); `PageGate` signs people in,
enforces roles and CSRF, and sets the pages' security headers."""
