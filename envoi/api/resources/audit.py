"""GET /v3/audit-log: the caller's account's audit log, newest first and paged (`limit`, `before`), or
all of it as a download with `format=csv` or `format=jsonl`. Filters: `action` (exact, or a prefix
ending in '.'), `actor`. The caller's role must allow read_audit_log (envoi.accounts.roles)."""

from __future__ import annotations

from urllib.parse import urlencode

import falcon

from envoi.accounts import roles
from envoi.accounts.audit import MAX_PAGE, AuditFilter, entry_json
from envoi.api.errors import ApiError

FORMATS = ("json", "csv", "jsonl")


class AuditLog:
    def __init__(self, audit):
        self.audit = audit

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        principal = req.context.principal
        roles.require(principal.role, "read_audit_log")
        fmt = req.get_param("format") or "json"
        if fmt not in FORMATS:
            raise ApiError(400, f"format must be one of {', '.join(FORMATS)}")
        filters = AuditFilter(action=req.get_param("action") or None, actor=req.get_param("actor") or None)
        if fmt != "json":
            resp.content_type = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
            resp.downloadable_as = f"audit-log.{fmt}"
            resp.text = self.audit.export(principal.account_id, filters, fmt)
            return
        limit = req.get_param_as_int("limit", min_value=1, max_value=MAX_PAGE) or 100
        before = req.get_param_as_int("before", min_value=1)
        rows = self.audit.list(principal.account_id, filters, limit=limit, before=before)
        paging = {}
        if len(rows) == limit:
            query = {"limit": limit, "before": rows[-1]["id"], "action": filters.action, "actor": filters.actor}
            paging["next"] = f"{req.path}?{urlencode({k: v for k, v in query.items() if v})}"
        resp.media = {"items": [entry_json(r) for r in rows], "paging": paging}
