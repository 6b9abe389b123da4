"""The API's JSON responses are written by one shared encoder: the very bytes falcon's default handler writes."""

from __future__ import annotations

import falcon
import falcon.testing

from envoi.api.app import _JSON_RESPONSES

MEDIA = [
    {"id": "<20261207.0123456789abcdef@example.com>", "message": "Queued. Thank you."},
    {"id": '<a"b\\c\u00e9\u2028\U0001f600@x>', "n": [1, 2.5, None, True, False], "nested": {"k": []}},
    [], {}, "text", 3, None,
]


class _Resource:
    def __init__(self, media):
        self.media = media

    def on_get(self, req, resp):
        resp.media = self.media


def _served(media, handler) -> tuple[bytes, str]:
    app = falcon.App()
    if handler is not None:
        app.resp_options.media_handlers[falcon.MEDIA_JSON] = handler
    app.add_route("/", _Resource(media))
    result = falcon.testing.TestClient(app).simulate_get("/")
    return result.content, result.headers["content-type"]


def test_same_bytes_and_type_as_falcons_default_handler():
    for media in MEDIA:
        assert _served(media, _JSON_RESPONSES) == _served(media, None)
