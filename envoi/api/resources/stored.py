"""GET /v3/domains/{d}/messages/{storage_key}: a stored message, while retention keeps it."""

from __future__ import annotations

import falcon

from envoi.api.errors import ApiError
from envoi.api.resources.events import DomainScoped
from envoi.mta.stored_messages import parsed


class StoredMessage(DomainScoped):
    def __init__(self, accounts, storage):
        super().__init__(accounts)
        self.storage = storage

    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str, storage_key: str) -> None:
        found = self.storage.get(self.domain(req, domain)["id"], storage_key)
        if found is None:
            raise ApiError(404, "Message not found")
        row, mime = found
        if "message/rfc2822" in (req.get_header("Accept") or ""):
            resp.media = {"body-mime": mime.decode("utf-8", "replace"), "recipients": ",".join(row["recipients"])}
            return
        resp.media = parsed(row, mime)
