"""Tracking: per-domain settings (/v3/domains/{d}/tracking) and the public open/click/unsubscribe endpoints."""

from __future__ import annotations

import base64
import html
from typing import NoReturn

import falcon

from envoi.api.auth import PUBLIC
from envoi.api.client_address import ClientAddress
from envoi.api.errors import ApiError
from envoi.api.forms import read_form
from envoi.api.scope import DomainScoped
from envoi.infra.client_unit import client_unit
from envoi.mta.tracking import ForgedToken, InvalidToken

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
        resp.media = self.tracking.update_settings(row, kind, {k: v[-1] for k, v in fields.items() if v})


BAD_TOKENS_PER_MINUTE = 30  # per client address; past it, that address's forged tokens get 429


class Guard:
    """Counts forged tokens per client address in Redis and answers a forging client 429 for a minute.

    Only tokens that fail authentication count and only they are refused: a genuine open, click or
    one-click unsubscribe is never held back by what others sent from the same address (a shared NAT,
    a mail provider's image proxy, a link scanner). So a valid token costs no Redis call at all."""

    def __init__(self, redis, region: str):
        self.redis = redis
        self.prefix = f"envoi:{region}:tracking:bad:"

    def bad(self, client: str) -> NoReturn:
        count = 0
        if self.redis is not None:
            # An IPv6 client holds a whole /64: counted per address it could forge from a fresh one each time.
            key = self.prefix + client_unit(client)
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.incr(key)
                pipe.expire(key, 60, nx=True)
                count = pipe.execute()[0]
            except Exception:  # Redis away: forged tokens still get their 404, unthrottled
                pass
        if count > BAD_TOKENS_PER_MINUTE:
            raise ApiError(429, "Too many invalid tracking links from this address; try again later",
                           headers={"Retry-After": "60"})
        raise ApiError(404, "Not found")


class _TokenEndpoint:
    """A public link from a sent message: the token is the only credential; forging is rate-guarded."""

    auth = PUBLIC

    def __init__(self, tracking, guard: Guard, client_address: ClientAddress):
        self.tracking = tracking
        self.guard = guard
        self.client_address = client_address

    def _hit(self, req, kind: str, token: str) -> dict:
        """Record the hit; a forged token counts against the caller and ends in guard.bad's 4xx."""
        client = self.client_address(req)
        try:
            return self.tracking.hit(kind, token, user_agent=req.get_header("User-Agent") or "", ip=client)
        except ForgedToken:
            self.guard.bad(client)
        except InvalidToken as ex:  # ours, but its message is gone (erased, expired) or unusable
            raise ApiError(404, "Not found") from ex

    def _verify(self, req, kind: str, token: str) -> dict:
        try:
            data = self.tracking.verify(kind, token)
        except ForgedToken:
            self.guard.bad(self.client_address(req))
        if not self.tracking.processing(data["account_id"]):  # closed or restricted: nothing of it is shown
            raise ApiError(404, "Not found")
        return data


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
    kind "u": the domain's unsubscribes; kind "l" (/l/): one member of one mailing list
    (%mailing_list_unsubscribe_url%).
    """

    def __init__(self, tracking, guard: Guard, client_address: ClientAddress, kind: str = "u"):
        super().__init__(tracking, guard, client_address)
        self.kind = kind

    def on_get(self, req, resp, token: str) -> None:
        data = self._verify(req, self.kind, token)
        what = f"the mailing list {data['extra']}" if self.kind == "l" else "these emails"
        resp.content_type = falcon.MEDIA_HTML
        resp.text = PAGE.format(title="Unsubscribe", body=(
            f"<p>Unsubscribe <b>{html.escape(data['recipient'])}</b> from {html.escape(str(what))}?</p>"
            f'<form method="post" action="{html.escape(req.path)}">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>'))

    def on_post(self, req, resp, token: str) -> None:
        data = self._hit(req, self.kind, token)
        resp.content_type = falcon.MEDIA_HTML
        resp.text = PAGE.format(title="Unsubscribed", body=(
            f"<p><b>{html.escape(data['recipient'])}</b> has been unsubscribed.</p>"))
