"""POST /v1/regions/lookup: a peer region asks whether a login (sent only as a keyed hash) is one of ours.

Public at the key middleware: the request is authenticated by its signature with ENVOI_ROUTING_SECRET
(envoi.accounts.routing). Nothing of it is stored or logged; the path holds nothing of the login, so an
access log line names no one.
"""

from __future__ import annotations

from envoi.accounts.routing import MAX_BODY
from envoi.api.auth import PUBLIC
from envoi.api.errors import ApiError


class RegionLookup:
    auth = PUBLIC

    def __init__(self, router):
        self.router = router

    def on_post(self, req, resp) -> None:
        if (req.content_length or 0) > MAX_BODY:
            raise ApiError(413, "Region lookup too large")
        body = req.bounded_stream.read(MAX_BODY + 1)
        known = self.router.answer(body, req.get_header("X-Envoi-Timestamp"), req.get_header("X-Envoi-Signature"))
        resp.media = {"known": known}
