"""Process endpoints: health and readiness. (/metrics is served on a private metrics bind, not here.)"""

from __future__ import annotations

import falcon

from envoi.api.auth import PUBLIC


class Health:
    auth = PUBLIC

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class Ready:
    """/readyz: Postgres and Redis answer (each with a connection of its own, so a full pool never
    makes a probe hang); 503 with what failed otherwise, so a balancer stops sending here."""

    auth = PUBLIC

    def __init__(self, health):
        self.health = health  # envoi.infra.health.Health

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ready, checks = self.health.readiness()
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {"status": "ok" if ready else "unavailable", "checks": checks}
