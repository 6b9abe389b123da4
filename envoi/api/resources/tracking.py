"""Tracking: per-domain settings (/v3/domains/{d}/tracking) and the public open/click/unsubscribe endpoints."""

from __future__ import annotations

import base64
import html

import falcon

from envoi.api.auth import PUBLIC
from envoi.api.errors import ApiError
from envoi.api.forms import read_form
from envoi.api.resources.events import DomainScoped
from envoi.mta.tracking import InvalidToken, TrackingSettingsError

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
PAGE = """<!doctype html><html><head><meta charset="utf-8"><meta name="robots" content="noindex">
<title>{title}</title></head><body style="font-family:sans-serif;max-width:32em;margin:4em auto">
{body}</body></html>"""


class TrackingSettings(DomainScoped):
    def __init__(self, accounts, tracking):
        super().__init__(accounts)
        self.tracking = tracking

    def on_get(self, req, resp, domain: str) -> None:
        resp.media = self.tracking.settings_json(self.domain(req, domain))

    def on_put_item(self, req, resp, domain: str, kind: str) -> None:
        row = self.domain(req, domain)
        fields, _ = read_form(req)
        try:
            resp.media = self.tracking.update_settings(row, kind, {k: v[-1] for k, v in fields.items() if v})
        except TrackingSettingsError as ex:
            raise ApiError(400, str(ex)) from ex


BAD_TOKENS_PER_MINUTE = 30  # per client IP; past it, every tracking request from that IP gets 429


class Guard:
    """Counts invalid tokens per client IP in Redis and turns a forging client away for a minute."""

    def __init__(self, redis, region: str):
        self.redis = redis
        self.prefix = f"envoi:{region}:tracking:bad:"

    def check(self, req) -> None:
        if self.redis is None:
            return
        try:
            count = int(self.redis.get(self.prefix + (req.remote_addr or "-")) or 0)
        except Exception:  # Redis away: tracking keeps working, unguarded
            return
        if count >= BAD_TOKENS_PER_MINUTE:
            raise ApiError(429, "Too many invalid tracking links from this address; try again later",
                           headers={"Retry-After": "60"})

    def bad(self, req) -> None:
        if self.redis is not None:
            key = self.prefix + (req.remote_addr or "-")
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.incr(key)
                pipe.expire(key, 60, nx=True)
                pipe.execute()
            except Exception:
                pass
        raise ApiError(404, "Not found")


def _client(req) -> tuple[str, str | None]:
    return req.get_header("User-Agent") or "", req.remote_addr


class _TokenEndpoint:
    """A public link from a sent message: rate-guarded, the token is the only credential."""

    auth = PUBLIC

    def __init__(self, tracking, guard: Guard):
        self.tracking = tracking
        self.guard = guard

    def _hit(self, req, kind: str, token: str) -> dict:
        """Record the hit; a bad token counts against the caller and ends in guard.bad's 4xx."""
        self.guard.check(req)
        ua, ip = _client(req)
        try:
            return self.tracking.hit(kind, token, user_agent=ua, ip=ip)
        except InvalidToken:
            self.guard.bad(req)


class Open(_TokenEndpoint):
    def on_get(self, req, resp, token: str) -> None:
        self._hit(req, "o", token)
        resp.content_type = "image/gif"
        resp.set_header("Cache-Control", "no-store, max-age=0")
        resp.data = PIXEL


class Click(_TokenEndpoint):
    def on_get(self, req, resp, token: str) -> None:
        data = self._hit(req, "c", token)  # a bad token never gets a redirect to anything unsigned
        resp.status = falcon.HTTP_302
        resp.set_header("Location", data["extra"])
        resp.set_header("Cache-Control", "no-store")
        resp.set_header("Referrer-Policy", "no-referrer")


class Unsubscribe(_TokenEndpoint):
    """GET shows a confirmation form (link scanners must not unsubscribe anyone); POST unsubscribes.

    POST is also the RFC 8058 one-click endpoint: no cookie, no auth, the token is the credential.
    """

    def on_get(self, req, resp, token: str) -> None:
        self.guard.check(req)
        try:
            data = self.tracking.verify("u", token)
        except InvalidToken:
            self.guard.bad(req)
        resp.content_type = falcon.MEDIA_HTML
        resp.text = PAGE.format(title="Unsubscribe", body=(
            f"<p>Unsubscribe <b>{html.escape(data['recipient'])}</b> from these emails?</p>"
            f'<form method="post" action="{html.escape(req.path)}">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>'))

    def on_post(self, req, resp, token: str) -> None:
        data = self._hit(req, "u", token)
        resp.content_type = falcon.MEDIA_HTML
        resp.text = PAGE.format(title="Unsubscribed", body=(
            f"<p><b>{html.escape(data['recipient'])}</b> has been unsubscribed.</p>"))


def add_routes(app: falcon.App, accounts, tracking, redis=None, region: str = "eu") -> None:
    settings = TrackingSettings(accounts, tracking)
    app.add_route("/v3/domains/{domain}/tracking", settings)
    app.add_route("/v3/domains/{domain}/tracking/{kind}", settings, suffix="item")
    guard = Guard(redis, region)
    app.add_route("/o/{token}", Open(tracking, guard))
    app.add_route("/c/{token}", Click(tracking, guard))
    app.add_route("/u/{token}", Unsubscribe(tracking, guard))
