"""Operator API for outbound TLS results (MTA-STS, RFC 8461) as TLS-RPT reports (RFC 8460):
`GET /v3/tls/reports?day=` lists the recipient domains with results that UTC day,
`GET /v3/tls/reports/{policy_domain}?day=` is that domain's report in RFC 8460's JSON format.

Recipient domains are not any account's: only operator keys may read them."""

from __future__ import annotations

from datetime import UTC, date, datetime

from envoi.api.auth import OPERATOR
from envoi.api.errors import ApiError
from envoi.mta.delivery import tls_report


def _day(req) -> date:
    value = req.get_param("day")
    if not value:
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(value)
    except ValueError as ex:
        raise ApiError(400, "day must be a date (YYYY-MM-DD)") from ex


class TlsReports:
    auth = OPERATOR

    def __init__(self, db, region: str):
        self.db = db
        self.region = region

    def on_get(self, req, resp) -> None:
        day = _day(req)
        items = tls_report.domains(self.db, day)
        resp.media = {"day": day.isoformat(), "items": items, "total_count": len(items)}

    def on_get_item(self, req, resp, policy_domain: str) -> None:
        day = _day(req)
        name = policy_domain.strip().lower().rstrip(".")
        if not name or len(name) > 253:
            raise ApiError(400, "policy_domain must be a domain name")
        resp.media = tls_report.report(self.db, name, day, organization="Envoi",
                                       report_id=f"{day.isoformat()}_{name}_{self.region}")
