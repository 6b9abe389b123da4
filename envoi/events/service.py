"""Events: the Mailgun-shaped record of everything that happens to a message.

Writers build items with `item()` and store them with `record()` inside their own transaction, so
an event exists exactly when the state change it describes was committed.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from envoi.events import store
from envoi.infra import ids
from envoi.infra.db import Connection, Database

log = logging.getLogger(__name__)
MAX_LIMIT = 300
DEFAULT_LIMIT = 100
FILTER_COLUMNS = {"event": "event", "recipient": "recipient", "message-id": "message_id", "severity": "severity"}
LOG_LEVELS = {"accepted": "info", "delivered": "info", "opened": "info", "clicked": "info",
              "unsubscribed": "info", "stored": "info", "complained": "warn", "rejected": "warn"}


class EventQueryError(ValueError):
    """A malformed events query (bad date, limit, filter or page token)."""


@dataclass(frozen=True)
class NewEvent:
    account_id: int
    domain_id: int
    message_pk: int | None
    data: dict


def item(event: str, *, message: dict, recipient: str | None, ts: float | None = None, **fields) -> dict:
    """Build one event item in Mailgun's shape from a message row and the event's own fields."""
    headers = message["headers"]
    data = {
        "event": event,
        "id": ids.event_id(),
        "timestamp": ts if ts is not None else time.time(),
        "log-level": fields.pop("log_level", None) or LOG_LEVELS.get(event, "info"),
        "message": {
            "headers": {k: headers.get(k) for k in ("to", "message-id", "from", "subject")},
            "attachments": message.get("attachments") or [],
            "size": message["size"],
        },
        "tags": list(message.get("tags") or []),
        "user-variables": message.get("user_variables") or {},
        "flags": {
            "is-authenticated": True,
            "is-test-mode": bool((message.get("options") or {}).get("testmode")),
        },
    }
    if recipient is not None:
        data["recipient"] = recipient
        data["recipient-domain"] = recipient.rpartition("@")[2]
    for key, value in fields.items():
        data[key.replace("_", "-")] = value
    return data


class Events:
    def __init__(self, db: Database, public_url: str):
        self.db = db
        self.public_url = public_url
        # Writers run inside the recording transaction (e.g. the webhook outbox, stats rollups), so
        # they commit or roll back with the events. Listeners run after commit (live stream).
        self.writers: list[Callable[[Connection, list[NewEvent]], None]] = []
        self.listeners: list[Callable[[list[NewEvent]], None]] = []

    def record(self, conn: Connection, events: list[NewEvent]) -> None:
        """Store events in the caller's transaction; call committed() once it has committed."""
        if not events:
            return
        self._insert(conn, events)
        for writer in self.writers:
            writer(conn, events)

    def committed(self, events: list[NewEvent]) -> None:
        for listener in self.listeners:
            try:
                listener(events)
            except Exception:  # a listener (live stream, wake-up) must never fail the write path
                log.exception("event listener failed")

    @staticmethod
    def _insert(conn: Connection, events: list[NewEvent]) -> None:
        rows = []
        for ev in events:
            data = ev.data
            rows.append((
                data["id"], ev.account_id, ev.domain_id, ev.message_pk, data["event"], data.get("severity"),
                data.get("recipient"), data["message"]["headers"].get("message-id"),
                datetime.fromtimestamp(data["timestamp"], UTC), data,
            ))
        store.insert_many(conn, rows)

    # query ------------------------------------------------------------------------------------
    def search(self, domain: dict, params: dict[str, list[str]]) -> dict:
        """Run GET /v3/{domain}/events with Mailgun's parameters; return items and paging URLs."""
        query = _parse_query(params)
        return self._page(domain, query)

    def page(self, domain: dict, token: str) -> dict:
        return self._page(domain, _decode_token(token))

    def _page(self, domain: dict, query: dict) -> dict:
        after = (datetime.fromtimestamp(query["after"][0], UTC), query["after"][1]) if query.get("after") else None
        with self.db.transaction() as conn:
            rows = store.query(
                conn,
                domain["id"],
                begin=_dt(query.get("begin")),
                end=_dt(query.get("end")),
                ascending=query["ascending"],
                filters={FILTER_COLUMNS[k]: v for k, v in query["filters"].items()},
                after=after,
                limit=query["limit"],
            )
        items = [row["data"] for row in rows]
        base = f"{self.public_url}/v3/{domain['name']}/events"
        cursor = [rows[-1]["ts"].timestamp(), rows[-1]["id"]] if rows else query.get("after")
        next_q = dict(query, after=cursor)
        first = [rows[0]["ts"].timestamp(), rows[0]["id"]] if rows else query.get("after")
        prev_q = dict(query, after=first, ascending=not query["ascending"])
        return {
            "items": items,
            "paging": {
                "first": f"{base}/{_encode_token(dict(query, after=None))}",
                "next": f"{base}/{_encode_token(next_q)}",
                "previous": f"{base}/{_encode_token(prev_q)}",
                "last": f"{base}/{_encode_token(dict(query, after=None, ascending=not query['ascending']))}",
            },
        }


def _dt(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def parse_time(value: str) -> float:
    """Mailgun accepts RFC 2822 dates or epoch seconds."""
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError) as ex:
        raise EventQueryError(f"'{value}' is not a valid date: use RFC 2822 or epoch seconds") from ex


def _yes(value: str) -> bool:
    v = value.strip().lower()
    if v in ("yes", "true", "1"):
        return True
    if v in ("no", "false", "0"):
        return False
    raise EventQueryError("ascending must be yes or no")


def _parse_query(params: dict[str, list[str]]) -> dict:
    def one(name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values else None

    begin = parse_time(v) if (v := one("begin")) else None
    end = parse_time(v) if (v := one("end")) else None
    if (v := one("ascending")) is not None:
        ascending = _yes(v)
    else:
        # NOTE: with only `begin`, reading forward from it is what callers mean (Mailgun's polling recipe).
        ascending = begin is not None and end is None
    if begin is not None and end is not None and begin > end:
        begin, end = end, begin
        ascending = False if one("ascending") is None else ascending
    try:
        limit = int(one("limit") or DEFAULT_LIMIT)
    except ValueError as ex:
        raise EventQueryError("limit must be an integer") from ex
    if not 1 <= limit <= MAX_LIMIT:
        raise EventQueryError(f"limit must be between 1 and {MAX_LIMIT}")
    filters = {}
    for name in FILTER_COLUMNS:
        if name in params:
            values = [x.strip().strip("<>") if name == "message-id" else x.strip()
                      for v in params[name] for x in v.split(" OR ") if x.strip()]
            filters[name] = values
    return {"begin": begin, "end": end, "ascending": ascending, "limit": limit, "filters": filters, "after": None}


def _encode_token(query: dict) -> str:
    raw = json.dumps(query, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> dict:
    try:
        query = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        assert isinstance(query, dict) and {"ascending", "limit", "filters"} <= query.keys()
        for name in query["filters"]:
            if name not in FILTER_COLUMNS:
                raise ValueError(name)
        return query
    except Exception as ex:
        raise EventQueryError("invalid page token") from ex
