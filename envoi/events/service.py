"""Events: the Mailgun-shaped record of everything that happens to a message.

Writers build items with `item()` and store them with `record()` inside their own transaction, so
an event exists exactly when the state change it describes was committed.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Protocol

from envoi.events import filters, store
from envoi.events.errors import EventQueryError
from envoi.infra import ids
from envoi.infra.db import Connection, Database

log = logging.getLogger(__name__)
MAX_LIMIT = 300
DEFAULT_LIMIT = 100
FILTER_FIELDS = tuple(filters.FIELDS)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY = 86400.0
MAX_EPOCH = 32503680000  # year 3000: later dates are refused (and NaN, and inf)
LOG_LEVELS = {"accepted": "info", "delivered": "info", "opened": "info", "clicked": "info",
              "unsubscribed": "info", "stored": "info", "complained": "warn", "rejected": "warn"}


# json.dumps(data, separators=(",", ":")) without building an encoder per call: the same output.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True)
class NewEvent:
    account_id: int
    domain_id: int
    message_pk: int | None
    data: dict
    text: str | None = field(default=None, repr=False, compare=False)  # data's JSON, if made with it (ItemSeries)

    @functools.cached_property
    def json(self) -> str:
        """data serialised once, for Postgres and for the live stream alike (read it after recording:
        record() may still add fields)."""
        return self.text if self.text is not None else _compact_json(self.data)


class ItemSeries:
    """Items that differ from one sample item only in a few leaves (the accepted events of a batch send's
    copies: their ids, recipients, To headers, sizes, storage keys), each made with its JSON by filling
    the sample's JSON, cut once at those leaves, rather than encoding each whole.

    PERF: encoding a ~750-byte accepted event took ~9 us here, its item() ~4.5 us: ~9 % of a batch send's
    accept. An item made here shares the sample's other containers (tags, flags, user-variables): nothing
    mutates an item once made but record(), which only adds top-level fields the sample already has."""

    def __init__(self, sample: dict, varying: Sequence[tuple[str, ...]]):
        self.sample = sample
        self.varying = tuple(varying)
        # The containers to copy, parents first, as (its parent's step, key); the leaves as (step, key, index).
        index: dict[tuple, int] = {(): 0}
        steps, leaves = [], []
        for n, path in enumerate(self.varying):
            for depth in range(1, len(path)):
                if path[:depth] not in index:
                    index[path[:depth]] = len(steps) + 1
                    steps.append((index[path[:depth - 1]], path[depth - 1]))
            leaves.append((index[path[:-1]], path[-1], n))
        self._steps, self._leaves = tuple(steps), tuple(leaves)
        marked = self._with(tuple(f"\0envoi-slot-{i}\0" for i in range(len(self.varying))))
        text = _compact_json(marked)
        found = sorted((text.find(_json_value(f"\0envoi-slot-{i}\0")), i) for i in range(len(self.varying)))
        self.order = tuple(i for _, i in found)  # the leaves in the JSON text's order
        self.parts, at = [], 0
        for start, i in found:
            self.parts.append(text[at:start])
            at = start + len(_json_value(f"\0envoi-slot-{i}\0"))
        self.parts.append(text[at:])
        if any(start < 0 for start, _ in found) or any("\\u0000envoi-slot-" in part for part in self.parts):
            raise ValueError("a varying leaf is not in the sample, or the sample holds a marker itself")

    def _with(self, values: Sequence) -> dict:
        """The sample with its varying leaves set to values (the containers on their paths copied)."""
        nodes = [dict(self.sample)]
        for parent, key in self._steps:
            inner = dict(nodes[parent][key])
            nodes[parent][key] = inner
            nodes.append(inner)
        for node, key, n in self._leaves:
            nodes[node][key] = values[n]
        return nodes[0]

    def make(self, values: Sequence) -> tuple[dict, str]:
        """(the item with the varying leaves set to values, its JSON as _compact_json writes it)."""
        out = [self.parts[0]]
        for i, part in zip(self.order, self.parts[1:], strict=True):
            value = values[i]
            out.append(_encode_str(value) if type(value) is str else _json_value(value))
            out.append(part)
        return self._with(values), "".join(out)


def _json_value(value) -> str:
    """One JSON value as _compact_json writes it inside an item."""
    if type(value) is str:
        return _encode_str(value)
    if type(value) is int:
        return int.__repr__(value)
    return _compact_json(value)


_encode_str = json.encoder.encode_basestring_ascii  # what the compact encoder uses (ensure_ascii)


def item(event: str, *, message: dict, recipient: str | None, ts: float | None = None, **fields) -> dict:
    """Build one event item in Mailgun's shape from a message row and the event's own fields."""
    headers = message["headers"]
    data = {
        "event": event,
        "id": ids.event_id(),
        "timestamp": ts if ts is not None else time.time(),
        "log-level": fields.pop("log_level", None) or LOG_LEVELS.get(event, "info"),
        "message": {
            "headers": {"to": headers.get("to"), "message-id": headers.get("message-id"),
                        "from": headers.get("from"), "subject": headers.get("subject")},
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
    if (scheduled := message.get("scheduled-for")) is not None:
        data["message"]["scheduled-for"] = scheduled  # an accepted event of o:deliverytime mail (epoch seconds)
    if template := (message.get("options") or {}).get("template"):
        data["template"] = template  # a stored template's {name, version} (Mailgun's field)
    if recipient is not None:
        data["recipient"] = recipient
        data["recipient-domain"] = recipient.rpartition("@")[2]
    for key, value in fields.items():
        data[_FIELD_NAMES.get(key) or key.replace("_", "-")] = value
    return data


# PERF: the relay's outcome fields' names as items spell them, without a replace per field and event.
_FIELD_NAMES = {"delivery_status": "delivery-status", "envelope": "envelope", "method": "method",
                "severity": "severity", "reason": "reason"}


@dataclass(frozen=True)
class Retention:
    """How long events are kept, per account plan; plans not listed keep `default` seconds."""

    default: float = 30 * DAY
    plans: Mapping[str, float] = field(default_factory=dict)

    def seconds(self, plan: str | None) -> float:
        return self.plans.get(plan or "", self.default)

    def longest(self, plans: list[str]) -> float:
        return max([self.default] + [self.seconds(p) for p in plans])


#: Plan -> event retention, before ENVOI_EVENT_RETENTION_PLANS overrides; other plans (free, ...)
#: keep ENVOI_EVENT_RETENTION (30 days).
PLAN_RETENTION = {"trial": 3 * DAY, "scale": 60 * DAY, "enterprise": 90 * DAY}


class EventWriter(Protocol):
    """Runs inside the transaction that records a batch of events (the webhook outbox, stats rollups,
    complaint suppressions), so what it writes commits or rolls back with them."""

    def __call__(self, conn: Connection, events: list[NewEvent], /) -> None: ...


class EventListener(Protocol):
    """Runs after the batch committed (the live stream, wake-ups); a failure is logged, never raised."""

    def __call__(self, events: list[NewEvent], /) -> None: ...


class Events:
    def __init__(self, db: Database, public_url: str, *, retention: Retention | None = None,
                 writers: Sequence[EventWriter] = (), listeners: Sequence[EventListener] = (),
                 maintenance_db: Database | None = None):
        self.db = db
        # maintain() holds a session-level lock across transactions: not through a transaction pooler.
        self.maintenance_db = maintenance_db or db
        self.public_url = public_url
        self.writers = tuple(writers)
        # Then partition upkeep: create a missing day's partition (its rows wait in the default
        # partition meanwhile) and purge past retention at most hourly, from whichever process records.
        self.listeners = (*listeners, self.maintain_soon)
        self.retention = retention or Retention(plans=PLAN_RETENTION)
        self.partition_days_ahead = 3
        self.maintain_every = 3600.0
        self._known_days: set[date] = set()
        self._last_maintenance = 0.0  # monotonic time of the last successful maintain()
        self._last_attempt = -1e9
        self._maintaining = threading.Lock()

    def record(self, conn: Connection, events: list[NewEvent]) -> None:
        """Store events in the caller's transaction; call committed() once it has committed."""
        if not events:
            return
        _add_methods(conn, events)
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
    def for_recipient(conn: Connection, account_id: int, address: str) -> list[dict]:
        return store.for_recipient(conn, account_id, address)

    @staticmethod
    def erase_recipient(conn: Connection, account_id: int, address: str) -> int:
        return store.erase_recipient(conn, account_id, address)

    @staticmethod
    def _insert(conn: Connection, events: list[NewEvent]) -> None:
        rows = []
        times: dict[float, datetime] = {}  # PERF: a batch's events mostly share their timestamp
        for ev in events:
            data = ev.data
            stamp = data["timestamp"]
            ts = times.get(stamp)
            if ts is None:
                ts = times[stamp] = datetime.fromtimestamp(stamp, UTC)
            rows.append((
                data["id"], ev.account_id, ev.domain_id, ev.message_pk, data["event"], data.get("severity"),
                data.get("recipient"), (data["message"]["headers"].get("message-id") or "").strip("<>") or None,
                ts, data, ev.json,
            ))
        store.insert_many(conn, rows)

    # query ------------------------------------------------------------------------------------
    def search(self, domain: dict, params: dict[str, list[str]]) -> dict:
        """Run GET /v3/{domain}/events with Mailgun's parameters; return items and paging URLs."""
        return json.loads(self.search_json(domain, params))

    def page(self, domain: dict, token: str) -> dict:
        return json.loads(self.page_json(domain, token))

    def search_json(self, domain: dict, params: dict[str, list[str]]) -> str:
        """search() as the JSON response body, items passed through from Postgres undecoded."""
        query = _parse_query(params)
        return self._page(domain, query, None, previous=False, inclusive=False)

    def page_json(self, domain: dict, token: str) -> str:
        token_data = _decode_token(token)
        return self._page(domain, token_data["q"], token_data["c"], previous=token_data["p"],
                          inclusive=token_data["i"])

    def _page(self, domain: dict, query: dict, cursor: list | None, *, previous: bool, inclusive: bool) -> str:
        conditions = [filters.to_sql(name, filters.parse_values(name, values))
                      for name, values in query["filters"].items()]
        ascending = query["ascending"] != previous
        after = (_from_us(cursor[0]), cursor[1]) if cursor else None
        with self.db.transaction() as conn:
            begin = self._retention_floor(conn, domain, _dt(query.get("begin")))
            rows = store.query(
                conn,
                domain["id"],
                begin=begin,
                end=_dt(query.get("end")),
                ascending=ascending,
                conditions=conditions,
                after=after,
                limit=query["limit"],
                inclusive=inclusive,
            )
        if previous:
            rows.reverse()
        base = f"{self.public_url}/v3/{domain['name']}/events"

        def url(c, p=False, i=False):
            return f"{base}/{_encode_token({'q': query, 'c': c, 'p': p, 'i': i})}"

        if rows:
            first, last = _cursor(rows[0]), _cursor(rows[-1])
            next_url, prev_url = url(last), url(first, p=True)
        elif previous:
            # Nothing before the cursor: the next page starts at it.
            next_url, prev_url = url(cursor, i=bool(cursor)), url(cursor, p=True, i=inclusive)
        else:
            # The end, for now: next stays put so polling it finds new events; previous includes the cursor.
            next_url, prev_url = url(cursor, i=inclusive), url(cursor, p=True, i=bool(cursor))
        paging = {"first": url(None), "next": next_url, "previous": prev_url, "last": url(None, p=True)}
        # PERF: items are jsonb rendered as text by Postgres and joined as is: no decode/encode round trip.
        return '{"items":[' + ",".join(row["data"] for row in rows) + '],"paging":' + json.dumps(paging) + "}"

    def _retention_floor(self, conn: Connection, domain: dict, begin: datetime | None) -> datetime:
        """Events older than the account's retention are not served, even before the purge runs."""
        keep = self.retention.seconds(store.account_plan(conn, domain["account_id"]))
        floor = datetime.now(UTC) - timedelta(seconds=keep)
        return floor if begin is None or begin < floor else begin

    # message trace ----------------------------------------------------------------------------
    def trace(self, domain: dict, message_id: str) -> dict | None:
        """Every attempt for every recipient of one message, from its events; None if unknown."""
        message_id = message_id.strip().strip("<>")
        with self.db.transaction() as conn:
            since = self._retention_floor(conn, domain, None)
            rows = store.message_events(conn, domain["id"], message_id, since)
        if not rows:
            return None
        return build_trace(domain, message_id, rows)

    # partitions and retention -----------------------------------------------------------------
    def maintain(self, now: float | None = None, *, wait: bool = True) -> dict | None:
        """Create upcoming daily partitions, empty the default partition into real ones, drop
        partitions past the longest retention and delete rows past each plan's retention.

        Returns what was done, or None if another process holds the maintenance lock (wait=False).
        """
        now_dt = datetime.fromtimestamp(now if now is not None else time.time(), UTC)
        report = {"created": [], "dropped": [], "deleted": 0}
        with self.maintenance_db.transaction() as conn:
            conn.commit()
            got = store.maintenance_lock(conn, wait)
            conn.commit()
            if not got:
                return None
            try:
                plans = store.plans_in_use(conn)
                longest = self.retention.longest(plans)
                cutoff = now_dt - timedelta(seconds=longest)
                today = now_dt.date()
                existing = store.partitions(conn)
                wanted = {today + timedelta(days=d) for d in range(-1, self.partition_days_ahead + 1)}
                wanted |= {d for d in store.default_days(conn) if store.day_bounds(d)[1] > cutoff}
                for day in sorted(wanted - existing.keys()):
                    store.create_partition(conn, day)
                    conn.commit()
                    report["created"].append(store.partition_name(day))
                for day in sorted(existing):
                    if store.day_bounds(day)[1] <= cutoff:
                        store.drop_partition(conn, day)
                        conn.commit()
                        report["dropped"].append(store.partition_name(day))
                report["deleted"] += store.delete_default_before(conn, cutoff)
                conn.commit()
                for plan in plans:
                    keep = self.retention.seconds(plan)
                    if keep >= longest:
                        continue
                    domain_ids = store.domains_of_plan(conn, plan)
                    if domain_ids:
                        report["deleted"] += store.delete_domain_events_before(
                            conn, domain_ids, now_dt - timedelta(seconds=keep), cutoff)
                        conn.commit()
                self._known_days = set(store.partitions(conn))
                self._last_maintenance = time.monotonic()
            finally:
                conn.rollback()
                store.maintenance_unlock(conn)
                conn.commit()
        return report

    def maintain_soon(self, events: list[NewEvent]) -> None:
        """Listener: run maintenance in the background when a recent event's day has no partition
        yet (its row waits in the default partition meanwhile; retried at most every 10 s), or
        when the last successful run is older than `maintain_every`."""
        now = time.monotonic()
        recent = datetime.now(UTC).date() - timedelta(days=1)
        missing = any(day >= recent and day not in self._known_days
                      for day in {datetime.fromtimestamp(ev.data["timestamp"], UTC).date() for ev in events})
        if missing:
            due = now - self._last_attempt > 10
        else:
            due = not self._last_maintenance or now - self._last_maintenance > self.maintain_every
            due = due and now - self._last_attempt > 60
        if not due or not self._maintaining.acquire(blocking=False):
            return
        self._last_attempt = now

        def run() -> None:
            try:
                self.maintain(wait=False)
            except Exception:
                log.exception("events partition maintenance failed")
            finally:
                self._maintaining.release()

        threading.Thread(target=run, name="events-maintenance", daemon=True).start()


def _add_methods(conn: Connection, events: list[NewEvent]) -> None:
    """Delivery events carry the message's submission method (http|smtp), as Mailgun's do."""
    missing = {ev.message_pk for ev in events if "method" not in ev.data and ev.message_pk is not None}
    if not missing:
        return
    methods = store.message_methods(conn, sorted(missing))
    for ev in events:
        if "method" not in ev.data and ev.message_pk in methods:
            ev.data["method"] = methods[ev.message_pk]
            object.__setattr__(ev, "text", None)  # the JSON it came with no longer says all


def build_trace(domain: dict, message_id: str, rows: list[dict]) -> dict:
    first = rows[0]["data"]
    headers = first["message"]["headers"]
    accepted_at: dict[str, float] = {}
    recipients: dict[str, dict] = {}
    storage = None
    for row in rows:
        data = row["data"]
        rcpt = row["recipient"] or ""
        entry = recipients.setdefault(rcpt, {"recipient": rcpt, "status": "queued", "accepted-at": None,
                                             "attempts": [], "final-at": None, "next-attempt-at": None})
        ts = data["timestamp"]
        if row["event"] == "accepted":
            entry["accepted-at"] = accepted_at[rcpt] = ts
            storage = storage or data.get("storage")
            continue
        if row["event"] not in ("delivered", "failed"):
            continue  # opens, clicks, ... are not attempts
        status = data.get("delivery-status") or {}
        envelope = data.get("envelope") or {}
        since = accepted_at.get(rcpt)
        entry["attempts"].append({
            "attempt-no": status.get("attempt-no"),
            "timestamp": ts,
            "event": row["event"],
            "severity": row["severity"],
            "reason": data.get("reason"),
            "mx-host": status.get("mx-host"),
            "tls": status.get("tls"),
            "certificate-verified": status.get("certificate-verified"),
            "egress-ip": envelope.get("sending-ip") or None,
            "smtp": {"code": status.get("code"), "enhanced-code": status.get("enhanced-code"),
                     "message": status.get("message"), "description": status.get("description")},
            "bounce-class": status.get("bounce-class") or None,
            "session-seconds": status.get("session-seconds"),
            "retry-seconds": status.get("retry-seconds"),
            "seconds-since-accepted": round(ts - since, 3) if since is not None else None,
        })
        if row["event"] == "delivered":
            entry["status"], entry["final-at"], entry["next-attempt-at"] = "delivered", ts, None
        elif row["severity"] == "permanent":
            entry["status"], entry["final-at"], entry["next-attempt-at"] = "failed", ts, None
        else:
            entry["status"] = "queued"
            retry = status.get("retry-seconds")
            entry["next-attempt-at"] = ts + retry if retry is not None else None
    return {
        "message-id": message_id,
        "domain": domain["name"],
        "from": headers.get("from"),
        "subject": headers.get("subject"),
        "size": first["message"].get("size"),
        "tags": first.get("tags") or [],
        "method": first.get("method"),
        "accepted-at": min(accepted_at.values()) if accepted_at else None,
        # Where the body is kept (while retention keeps it): the first copy's; copies per recipient
        # (recipient variables) differ only in what was substituted.
        "storage": storage,
        "recipients": sorted(recipients.values(), key=lambda r: r["recipient"]),
    }


def _cursor(row: dict) -> list:
    return [_to_us(row["ts"]), row["id"]]


def _to_us(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(microseconds=1)


def _from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def _dt(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def parse_time(value: str) -> float:
    """Mailgun accepts RFC 2822 dates or epoch seconds."""
    value = value.strip()
    try:
        epoch = float(value)
    except ValueError:
        try:
            epoch = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, OverflowError) as ex:
            raise EventQueryError(f"'{value}' is not a valid date: use RFC 2822 or epoch seconds") from ex
    if not 0 <= epoch < MAX_EPOCH:  # 1970 .. 3000, and not NaN
        raise EventQueryError(f"'{value}' is not a valid date: use RFC 2822 or epoch seconds")
    return epoch


def _yes(value: str) -> bool:
    v = value.strip().lower()
    if v in ("yes", "true", "1"):
        return True
    if v in ("no", "false", "0"):
        return False
    raise EventQueryError("ascending must be yes or no")


def parse_filters(params: dict[str, list[str]]) -> dict[str, list[str]]:
    """The filter parameters of a request, validated (EventQueryError on a bad expression)."""
    out = {}
    for name in FILTER_FIELDS:
        values = [v for v in params.get(name) or [] if v.strip()]
        if values:
            try:
                filters.parse_values(name, values)
            except filters.FilterError as ex:
                raise EventQueryError(str(ex)) from ex
            out[name] = values
    return out


def compile_filters(query_filters: dict[str, list[str]]) -> list[tuple[str, object]]:
    return [(name, filters.parse_values(name, values)) for name, values in query_filters.items()]


def matches(compiled: list[tuple[str, object]], data: dict) -> bool:
    return all(filters.matches(name, node, data) for name, node in compiled)


#: The events API's parameters besides the filter fields (Mailgun's query options; `pretty` is accepted and
#: has no effect: the JSON is the same).
QUERY_OPTIONS = ("begin", "end", "ascending", "limit", "pretty")


def check_parameter_names(params: dict[str, list[str]], options: Sequence[str] = QUERY_OPTIONS) -> None:
    """A misspelt filter must not answer with every event: a name that is neither a filter field nor
    one of `options` is an EventQueryError (400) naming it."""
    for name in params:
        if name not in filters.FIELDS and name not in options:
            raise EventQueryError(f"'{name[:100]}' is not a valid filter or query option: use one of"
                                  f" {', '.join((*options, *filters.FIELDS))}")


def _parse_query(params: dict[str, list[str]]) -> dict:
    check_parameter_names(params)

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
    return {"begin": begin, "end": end, "ascending": ascending, "limit": limit, "filters": parse_filters(params)}


def _encode_token(token: dict) -> str:
    raw = json.dumps(token, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> dict:
    """A paging token, checked as hostile input: it comes back from the client, who may forge it."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        query = data["q"]
        _require(isinstance(query, dict) and {"ascending", "limit", "filters"} <= query.keys())
        _require(isinstance(query["ascending"], bool) and _is_int(query["limit"]) and 1 <= query["limit"] <= MAX_LIMIT)
        for key in ("begin", "end"):
            value = query.get(key)
            _require(value is None or (isinstance(value, int | float) and not isinstance(value, bool)
                                       and 0 <= value < MAX_EPOCH))  # NaN fails the comparison too
        _require(isinstance(query["filters"], dict))
        for name, values in query["filters"].items():
            _require(name in filters.FIELDS and isinstance(values, list) and all(isinstance(v, str) for v in values))
            filters.parse_values(name, values)
        cursor = data.get("c")
        if cursor is not None:
            _require(isinstance(cursor, list) and len(cursor) == 2 and all(_is_int(x) for x in cursor))
            _require(0 <= cursor[0] < MAX_EPOCH * 1_000_000 and 0 <= cursor[1] < 2**63)  # a timestamp, a bigint id
        return {"q": query, "c": cursor, "p": bool(data.get("p")), "i": bool(data.get("i"))}
    except Exception as ex:
        raise EventQueryError("invalid page token") from ex


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(condition: bool) -> None:
    if not condition:
        raise ValueError("invalid page token")
