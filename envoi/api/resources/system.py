"""Process endpoints: health. (/metrics is served on a private metrics bind, not here.)"""

from __future__ import annotations

import falcon

from envoi.api.auth import PUBLIC


class Health:
    auth = PUBLIC

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}
