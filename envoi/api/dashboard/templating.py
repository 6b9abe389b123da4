"""Jinja2, the dashboard's only template engine: autoescaped HTML from envoi/api/dashboard/templates."""

from __future__ import annotations

from datetime import UTC, datetime

import falcon
import jinja2

from envoi.api.dashboard.static import asset_url

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("envoi.api.dashboard", "templates"),
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    undefined=jinja2.StrictUndefined,  # a misspelt name fails the page's test, not silently renders ''
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value) -> str:
    """A timestamp (epoch seconds or datetime) as UTC text."""
    if value is None or value == "":
        return ""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _percent(value: float) -> str:
    return f"{value * 100:.2f}%"


_env.filters.update(when=_when, number=_number, percent=_percent)
_env.globals.update(asset=asset_url)


def render(req: falcon.Request, resp: falcon.Response, template: str, *, status: int = 200, **context) -> None:
    """Render TEMPLATE into the response with the signed-in user and the CSRF token in its context."""
    user = getattr(req.context, "user", None)
    resp.status = falcon.code_to_http_status(status)
    resp.content_type = "text/html; charset=utf-8"
    resp.text = _env.get_template(template).render(
        user=user, csrf_token=getattr(req.context, "csrf_token", ""), path=req.path, **context)

