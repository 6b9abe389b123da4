"""Process endpoints: health and Prometheus metrics."""

from __future__ import annotations

import falcon

from envoi.api.auth import PUBLIC
from envoi.infra.metrics import CONTENT_TYPE


class Health:
    auth = PUBLIC

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class MetricsEndpoint:
    auth = PUBLIC

    def __init__(self, metrics):
        self.metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE
        resp.data = self.metrics.render()
