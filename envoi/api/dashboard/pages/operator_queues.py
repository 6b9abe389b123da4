"""Operator page for what waits: the delivery queue per destination domain and per relay host, and the
webhook backlog per account. Read-only; the services bound every query (envoi.mta.queue,
envoi.webhooks.service.Webhooks.backlog_overview), so the page stays fast with a million queued."""

from __future__ import annotations

from datetime import UTC, datetime

import falcon

from envoi.api.auth import SESSION
from envoi.api.dashboard.gate import OPERATOR
from envoi.api.dashboard.templating import render


def age(then: datetime | None, now: datetime) -> str:
    """'3 h 12 min' since THEN ('' for none, 'not yet' for the future)."""
    if then is None:
        return ""
    seconds = int((now - then).total_seconds())
    if seconds < 0:
        return "not yet"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{days} d"] * bool(days) + [f"{hours} h"] * bool(hours) + [f"{minutes} min"] * bool(minutes)
    return " ".join(parts[:2]) or f"{seconds} s"


class OperatorQueues:
    """/dashboard/operator/queues."""
    auth, audience = SESSION, OPERATOR

    def __init__(self, queue, webhooks):
        self.queue = queue
        self.webhooks = webhooks

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        now = datetime.now(UTC)
        render(req, resp, "operator_queues.html", queue=self.queue.overview(),
               backlog=self.webhooks.backlog_overview(), failing=self.webhooks.failing_endpoints(limit=50),
               age=lambda then: age(then, now))
