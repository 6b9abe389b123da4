"""Overview: what was sent and what became of it, by hour or day, with bounce and complaint rates
against the thresholds mailbox providers act on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import falcon

from envoi.api.auth import SESSION
from envoi.api.dashboard.charts import line_chart
from envoi.api.dashboard.pages.common import chosen_domain
from envoi.api.dashboard.templating import render

EVENTS = ("accepted", "delivered", "failed", "opened", "clicked", "complained")
RANGES = {"hour": "48h", "day": "30d"}  # resolution -> how far back


@dataclass(frozen=True)
class Rate:
    name: str
    value: float
    warn: float
    critical: float

    @property
    def level(self) -> str:
        return "critical" if self.value >= self.critical else "warn" if self.value >= self.warn else "ok"


def rates(delivered: int, bounced: int, complained: int) -> list[Rate]:
    """Bounce rate = permanent failures / (delivered + permanent failures), complaint rate = complaints /
    delivered; warn and critical at 2% / 5% and 0.1% / 0.5%, the usual provider thresholds."""
    return [Rate("Bounce rate", bounced / max(delivered + bounced, 1), 0.02, 0.05),
            Rate("Complaint rate", complained / max(delivered, 1), 0.001, 0.005)]


class Overview:
    auth, reads = SESSION, "read_stats"

    def __init__(self, accounts, stats):
        self.accounts = accounts
        self.stats = stats

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        names, domain = chosen_domain(self.accounts, req, default_first=False)
        resolution = req.get_param("resolution") if req.get_param("resolution") in RANGES else "hour"
        query = {"event": list(EVENTS), "resolution": [resolution], "duration": [RANGES[resolution]]}
        if domain is None:
            result = self.stats.account_total(req.context.user.account_id, query)
        else:
            result = self.stats.total(domain, query)
        buckets = result["stats"]
        fmt = "%H:00" if resolution == "hour" else "%d %b"
        labels = [_label(b["time"], fmt) for b in buckets]

        def column(event: str, pick=lambda v: v["total"]) -> list[int]:
            return [pick(b[event]) for b in buckets]

        failed = column("failed", lambda v: v["permanent"]["total"] + v["temporary"]["total"])
        bounced = sum(column("failed", lambda v: v["permanent"]["total"]))
        totals = {e: sum(column(e)) for e in EVENTS if e != "failed"} | {"failed": sum(failed)}
        render(req, resp, "overview.html", domains=names, domain=domain["name"] if domain else "",
               resolution=resolution, totals=totals,
               rates=rates(totals["delivered"], bounced, totals["complained"]),
               sending=line_chart("Sending", labels, {"Accepted": column("accepted"),
                                                      "Delivered": column("delivered"), "Failed": failed}),
               engagement=line_chart("Engagement", labels, {"Opened": column("opened"), "Clicked": column("clicked"),
                                                            "Complained": column("complained")}))


def _label(rfc2822: str, fmt: str) -> str:
    return datetime.strptime(rfc2822, "%a, %d %b %Y %H:%M:%S UTC").strftime(fmt)
