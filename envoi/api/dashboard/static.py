"""The dashboard's own CSS and JavaScript, read once and served with a content hash in the URL (cached
for a year, so a new release is never shown with an old script). Nothing is loaded from another origin:
the pages work with no internet."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

import falcon

from envoi.api.auth import PUBLIC

URL_PREFIX = "/dashboard/static"
TYPES = {"css": "text/css; charset=utf-8", "js": "text/javascript; charset=utf-8", "svg": "image/svg+xml"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    url: str  # with ?v=<content hash>


@functools.cache
def assets() -> dict[str, Asset]:
    found = {}
    for entry in (resources.files("envoi.api.dashboard") / "static").iterdir():
        content_type = TYPES.get(entry.name.rpartition(".")[2])
        if content_type:
            body = entry.read_bytes()
            found[entry.name] = Asset(body, content_type, f"{URL_PREFIX}/{entry.name}?v={hashlib.sha256(body).hexdigest()[:12]}")
    return found


def asset_url(name: str) -> str:
    return assets()[name].url


class StaticFiles:
    auth = PUBLIC

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        asset = assets().get(name)
        if asset is None:
            raise falcon.HTTPNotFound()
        resp.data, resp.content_type = asset.body, asset.content_type
        resp.set_header("Cache-Control", "public, max-age=31536000, immutable")
        resp.set_header("X-Content-Type-Options", "nosniff")
