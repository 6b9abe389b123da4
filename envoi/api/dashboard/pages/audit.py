"""The account's audit log: newest first with the API's filters (actor, action, since, until), paged by
entry id, and the same filters as CSV or JSON-lines downloads (Audit.list / Audit.export, as
GET /v3/audit-log)."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

import falcon

from envoi.accounts.audit import AuditFilter, entry_json
from envoi.api.auth import SESSION
from envoi.api.dashboard.templating import render
from envoi.api.errors import ApiError

PAGE = 50
FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
FILTERS = ("actor", "action", "since", "until")


def _filters(req: falcon.Request) -> tuple[dict[str, str], AuditFilter]:
    """(the filter boxes as typed, the AuditFilter they mean); a date that is not one is a 400."""
    raw = {name: (req.get_param(name) or "").strip() for name in FILTERS}
    return raw, AuditFilter(action=raw["action"] or None, actor=raw["actor"] or None,
                            since=_moment(raw["since"], "since"), until=_moment(raw["until"], "until"))


def _moment(value: str, name: str) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(400, f"{name} must be a date or date and time (YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class AuditPage:
    """/dashboard/audit."""
    auth, reads = SESSION, "read_audit_log"

    def __init__(self, audit):
        self.audit = audit

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw, filters = _filters(req)
        before = req.get_param_as_int("before", min_value=1)
        rows = self.audit.list(req.context.user.account_id, filters, limit=PAGE, before=before)
        query = {k: v for k, v in raw.items() if v}
        more = f"?{urlencode({**query, 'before': rows[-1]['id']})}" if len(rows) == PAGE else None
        render(req, resp, "audit.html", entries=[entry_json(r) for r in rows], filters=raw, next_page=more,
               first_page=f"?{urlencode(query)}" if before else None,
               exports={fmt: f"/dashboard/audit/export?{urlencode({**query, 'format': fmt})}" for fmt in FORMATS})


class AuditExport:
    """/dashboard/audit/export?format=csv|jsonl: every matching entry, oldest first, as a download."""
    auth, reads = SESSION, "read_audit_log"

    def __init__(self, audit):
        self.audit = audit

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        fmt = req.get_param("format") or "csv"
        if fmt not in FORMATS:
            raise ApiError(400, "format must be csv or jsonl")
        _, filters = _filters(req)
        resp.content_type = FORMATS[fmt]
        resp.downloadable_as = f"audit-log.{fmt}"
        resp.text = self.audit.export(req.context.user.account_id, filters, fmt)
