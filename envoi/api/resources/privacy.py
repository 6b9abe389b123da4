"""GET/DELETE /v3/privacy/addresses/{address}: a data subject's export and erasure (account keys)."""

from __future__ import annotations

import falcon


class AddressData:
    def __init__(self, privacy):
        self.privacy = privacy

    def on_get(self, req: falcon.Request, resp: falcon.Response, address: str) -> None:
        resp.media = self.privacy.export(req.context.principal.account_id, address)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, address: str) -> None:
        result = self.privacy.erase(req.context.principal.account_id, address)
        resp.media = {"message": "Address data has been erased", **result}
