"""POST /v1/analytics/logs: Mailgun's newer logs API, a page of the same events store that
GET /v3/{domain}/events reads, over every domain of the account, with Mailgun's JSON query
(start/end, events, metric_events, filter {"AND": [...]}, pagination {sort, token, limit}).

Items are the stored events unchanged plus the Logs API's `@timestamp`, `domain` and `account`.
Pages are keyset cursors on (ts, id) carried in an opaque token; the account's retention applies
as in the events API.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from envoi.events import analytics_store as sql
from envoi.events.analytics import Filter, body_time, decode_token, encode_token, flag, parse_filter, strings
from envoi.events.errors import EventQueryError
from envoi.events.service import Retention
from envoi.infra.db import Database, like_escape

EVENTS = ("accepted", "rejected", "delivered", "failed", "opened", "clicked", "unsubscribed", "complained",
          "stored", "list_member_uploaded", "list_member_upload_error", "list_uploaded")
#: metric_events: a metric name stands for the events it counts, as (event, severity or None)
METRIC_EVENTS = {
    "accepted_count": ("accepted", None), "accepted_incoming_count": ("accepted", None),
    "accepted_outgoing_count": ("accepted", None), "processed_count": ("accepted", None),
    "delivered_count": ("delivered", None), "delivered_smtp_count": ("delivered", None),
    "delivered_http_count": ("delivered", None), "stored_count": ("stored", None),
    "opened_count": ("opened", None), "unique_opened_count": ("opened", None),
    "clicked_count": ("clicked", None), "unique_clicked_count": ("clicked", None),
    "unsubscribed_count": ("unsubscribed", None), "complained_count": ("complained", None),
    "failed_count": ("failed", None), "permanent_failed_count": ("failed", "permanent"),
    "temporary_failed_count": ("failed", "temporary"),
}
#: filter attribute -> (SQL expression, whether values compare case-insensitively)
ATTRIBUTES = {
    "domain": None,  # resolved to the account's domain ids
    "tag": ("tags", False),
    "recipient": ("lower(recipient)", True),
    "recipient_domain": ("lower(data ->> 'recipient-domain')", True),
    "message_id": ("message_id", False),
    "event": ("event", True),
    "severity": ("severity", True),
    "subject": ("subject", False),
    "from": ("sender", False),
    "ip": ("data #>> '{envelope,sending-ip}'", False),
}
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def _iso_ms(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _condition(f: Filter) -> tuple[str, list]:
    expr, folded = ATTRIBUTES[f.attribute]
    values = [v.strip("<>") if f.attribute == "message_id" else v for v in f.values]
    if folded:
        values = [v.lower() for v in values]
    if f.attribute == "tag" and f.comparator in ("=", "!="):
        cond, args = "tags && %s::text[]", [values]
    elif f.attribute == "tag":
        cond, args = "EXISTS (SELECT 1 FROM unnest(tags) x WHERE x ILIKE ANY(%s))", [
            [f"%{like_escape(v)}%" for v in values]]
    elif f.comparator in ("=", "!="):
        cond, args = f"{expr} = ANY(%s)", [values]
    else:
        cond, args = f"{expr} ILIKE ANY(%s)", [[f"%{like_escape(v)}%" for v in values]]
    return (cond, args) if f.comparator in ("=", "contains") else (f"({cond}) IS NOT TRUE", args)


class Logs:
    def __init__(self, db: Database, retention: Retention):
        self.db = db
        self.retention = retention

    def search(self, account_id: int, body: dict) -> dict:
        if not isinstance(body, dict):
            raise EventQueryError("the request body must be a JSON object")
        end = body_time(body, "end") or datetime.now(UTC)
        start = body_time(body, "start") or end - timedelta(days=1)
        if start > end:
            raise EventQueryError("start must be before end")
        pairs: list[tuple[str, str | None]] = []
        for name in strings(body, "events"):
            if name not in EVENTS:
                raise EventQueryError(f"'{name}' is not a valid event; use one of {', '.join(EVENTS)}")
            pairs.append((name, None))
        for name in strings(body, "metric_events"):
            if name not in METRIC_EVENTS:
                raise EventQueryError(f"'{name}' is not a valid metric event; use one of {', '.join(METRIC_EVENTS)}")
            pairs.append(METRIC_EVENTS[name])
        filters = parse_filter(body, {a: a for a in ATTRIBUTES})
        include_subaccounts = flag(body, "include_subaccounts")  # Mailgun's: the subaccounts' logs too
        include_totals = flag(body, "include_totals")
        raw = body.get("pagination") or {}
        if not isinstance(raw, dict):
            raise EventQueryError("pagination must be an object {sort, token, limit}")
        sort = raw.get("sort") or "timestamp:desc"
        if sort not in ("timestamp:asc", "timestamp:desc"):
            raise EventQueryError("pagination.sort must be timestamp:asc or timestamp:desc")
        limit = raw.get("limit", DEFAULT_LIMIT)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
            raise EventQueryError(f"pagination.limit must be between 1 and {MAX_LIMIT}")
        ascending = sort == "timestamp:asc"
        cursor, backwards = None, False
        if token := raw.get("token"):
            if not isinstance(token, str):
                raise EventQueryError("invalid pagination token")
            data = decode_token(token)
            c = data.get("c")
            if not (isinstance(c, list) and len(c) == 2 and all(isinstance(x, int) for x in c)) or not (
                    0 <= c[0] < 32503680000 * 10**6 and 0 <= c[1] < 2**63):
                raise EventQueryError("invalid pagination token")
            cursor = (datetime.fromtimestamp(c[0] / 1e6, UTC), c[1])
            backwards = bool(data.get("b"))

        conditions = []
        if pairs:
            parts, args = [], []
            for event, severity in dict.fromkeys(pairs):
                parts.append("(event = %s" + (" AND severity = %s)" if severity else ")"))
                args += [event] + ([severity] if severity else [])
            conditions.append(("(" + " OR ".join(parts) + ")", args))
        for f in filters:
            if f.attribute != "domain":
                conditions.append(_condition(f))
        with self.db.transaction() as conn:
            domains = sql.account_domains(conn, account_id, include_subaccounts=include_subaccounts)
            ids = [i for i in domains if all(f.matches(domains[i]) for f in filters if f.attribute == "domain")]
            keep = self.retention.seconds(sql.account_plan(conn, account_id))
            begin = max(start, datetime.now(UTC) - timedelta(seconds=keep))
            rows = sql.logs_page(conn, ids, begin=begin, end=end, ascending=ascending != backwards,
                                 conditions=conditions, after=cursor, limit=limit) if ids else []
            total = sql.logs_count(conn, ids, begin=begin, end=end, conditions=conditions) if (
                include_totals and ids) else 0
        if backwards:
            rows.reverse()
        items = []
        for row in rows:
            item = json.loads(row["data"])
            item["@timestamp"] = _iso_ms(row["ts"])
            item["domain"] = {"name": domains.get(row["domain_id"])}
            item["account"] = {"id": str(row["account_id"])}
            items.append(item)

        def token_of(row: dict, back: bool) -> str:
            ts = row["ts"]
            return encode_token({"c": [int(ts.timestamp()) * 10**6 + ts.microsecond, row["id"]], "b": back})

        pagination: dict = {}
        if rows:
            pagination["next"] = token_of(rows[-1], False)
            pagination["previous"] = token_of(rows[0], True)
        if include_totals:
            pagination["total"] = total
        return {"start": _rfc(start), "end": _rfc(end), "items": items, "pagination": pagination,
                "aggregates": {"all": total if include_totals else len(items), "metrics": {}}}


def _rfc(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")

