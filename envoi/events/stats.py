"""Stats and tags, served from rollups kept current as events are recorded.

`rollup` is an events writer: in the recording transaction it appends the batch's counts per
(domain, tag, hour, event, severity, reason, method) -- once with tag '' for the domain total and
once per tag -- to event_stats_pending, and inserts tags not seen before. Appending (instead of
upserting one counter row per domain and hour) keeps concurrent senders to one domain from queueing
on the same row lock until each other's commit (measured: 5x fewer events/s with 10 writers).
`fold` moves pending counts into event_stats_hourly every few seconds (a listener triggers it, and
partition maintenance runs it too); stats queries read both tables, so they are always current.
A tag's last-seen moves forward at each fold. `coarsen` (envoi scheduler, daily) keeps Mailgun's
retention: hourly buckets for 2 months, daily ones for a year, monthly ones after that.
"""

from __future__ import annotations

import calendar
import logging
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from envoi.events import store
from envoi.events.errors import EventQueryError
from envoi.events.service import parse_time
from envoi.infra.db import Connection, Database

STAT_EVENTS = ("accepted", "delivered", "failed", "opened", "clicked", "unsubscribed", "complained",
               "stored", "rejected")
RESOLUTIONS = ("hour", "day", "month")
MAX_BUCKETS = 5000
ESP_BLOCK = ("spam-block", "rate-limit")
PERMANENT_REASONS = ("suppress-bounce", "suppress-unsubscribe", "suppress-complaint", "bounce",
                     "delayed-bounce", "webhook", "optimized")
MAX_TAG_LENGTH = 256
HOURLY_KEPT = timedelta(days=61)  # Mailgun: hourly stats 2 months, daily 1 year, monthly forever
DAILY_KEPT = timedelta(days=366)
log = logging.getLogger(__name__)


def _hour(ts: float) -> datetime:
    return datetime.fromtimestamp(ts - ts % 3600, UTC)


INCOMING = "incoming"  # the rollup's method of accepted events of received (routed) mail


def dimensions(data: dict) -> tuple[str, str, str, str]:
    """(event, severity, reason, method) of one event as counted by the rollup."""
    event = data["event"]
    severity = reason = method = ""
    if event == "failed":
        severity = data.get("severity") or ""
        reason = data.get("reason") or ""
        if severity == "temporary":
            bounce_class = (data.get("delivery-status") or {}).get("bounce-class")
            reason = "espblock" if bounce_class in ESP_BLOCK else ""
    elif event == "accepted" and ((data.get("flags") or {}).get("is-routed") or "mailing-list" in data):
        # received by the inbound MX for a route or a mailing list: Mailgun's accepted.incoming (a list's
        # members' copies are the account's sending, counted by their own accepted events)
        method = INCOMING
    elif event in ("accepted", "delivered"):
        method = data.get("method") or ""
    return event, severity, reason, method


class Stats:
    #: Seconds between folds of pending counts into the hourly rollup (stats read both anyway).
    fold_every = 2.0

    def __init__(self, db: Database):
        self.db = db
        self._last_fold = 0.0
        self._folding = threading.Lock()

    # writer -----------------------------------------------------------------------------------
    def rollup(self, conn: Connection, events: list) -> None:
        """Events writer: append this batch's counts (no shared row is locked) and new tags."""
        counts: dict[tuple, list] = {}  # key -> [count, latest ts]
        tags: dict[tuple[int, str], list] = {}
        # PERF: a batch's events mostly share their timestamp (the relay's plan stamps a write's outcomes
        # with one `now`): its datetime and hour worked out once, not twice per event (~5 -> ~2 us an event).
        times: dict[float, tuple[datetime, datetime]] = {}
        for ev in events:
            data = ev.data
            stamp = data["timestamp"]
            known = times.get(stamp)
            if known is None:
                known = times[stamp] = (datetime.fromtimestamp(stamp, UTC), _hour(stamp))
            ts, hour = known
            event, severity, reason, method = dimensions(data)
            raw_tags = data.get("tags")
            for tag in {""} | {str(t)[:MAX_TAG_LENGTH] for t in raw_tags} if raw_tags else ("",):
                key = (ev.domain_id, ev.account_id, tag, hour, event, severity, reason, method)
                entry = counts.get(key)
                if entry is None:
                    counts[key] = [1, ts]
                else:
                    entry[0] += 1
                    entry[1] = max(entry[1], ts)
                if tag:
                    seen = tags.setdefault((ev.domain_id, tag), [ev.account_id, ts])
                    seen[1] = min(seen[1], ts)
        if counts:
            store.add_stats(conn, sorted(k + (n, last) for k, (n, last) in counts.items()))
        if tags:
            store.add_tags(conn, sorted((d, a, t, first) for (d, t), (a, first) in tags.items()))

    def fold(self) -> int | None:
        """Move pending counts into the hourly rollup; None if another process is at it."""
        with self.db.transaction() as conn:
            return store.fold_stats(conn)

    def coarsen(self, now: float | None = None) -> dict:
        """Mailgun's stats retention: hourly buckets for 2 months, then daily for a year, then monthly.
        Old hours are merged into their day, old days into their month; no count is lost."""
        now_dt = datetime.fromtimestamp(now if now is not None else time.time(), UTC)
        with self.db.transaction() as conn:
            days = store.coarsen_stats(conn, "day", now_dt - HOURLY_KEPT)
            months = store.coarsen_stats(conn, "month", now_dt - DAILY_KEPT)
        return {"merged into days": days, "merged into months": months}

    def fold_soon(self, events: list) -> None:
        """Listener: fold in the background at most every `fold_every` seconds."""
        if time.monotonic() - self._last_fold < self.fold_every or not self._folding.acquire(blocking=False):
            return
        self._last_fold = time.monotonic()

        def run() -> None:
            try:
                self.fold()
            except Exception:
                log.exception("folding event stats failed")
            finally:
                self._folding.release()

        threading.Thread(target=run, name="stats-fold", daemon=True).start()

    # GET /v3/{domain}/stats/total -----------------------------------------------------------------
    def total(self, domain: dict, params: dict[str, list[str]], tag: str = "") -> dict:
        return self._total([domain["id"]], params, tag)

    def account_total(self, account_id: int, params: dict[str, list[str]]) -> dict:
        """GET /v3/stats/total: the same, summed over every domain of the account."""
        with self.db.transaction() as conn:
            ids = [r["id"] for r in conn.execute("SELECT id FROM domains WHERE account_id = %s", (account_id,))]
        return self._total(ids, params, "")

    def _total(self, domain_ids: list[int], params: dict[str, list[str]], tag: str) -> dict:
        def one(name: str) -> str | None:
            values = [v for v in params.get(name) or [] if v.strip()]
            return values[-1].strip() if values else None

        events = stat_events(params)
        resolution = (one("resolution") or "day").lower()
        if resolution not in RESOLUTIONS:
            raise EventQueryError("resolution must be one of hour, day, month")
        end = datetime.fromtimestamp(parse_time(v), UTC) if (v := one("end")) else datetime.now(UTC)
        if v := one("duration"):
            start = minus_duration(end, v)
        elif v := one("start"):
            start = datetime.fromtimestamp(parse_time(v), UTC)
        else:
            start = end - timedelta(days=7)
        if start > end:
            raise EventQueryError("start must be before end")
        start = floor(start, resolution)
        periods = buckets(start, end, resolution)
        with self.db.transaction() as conn:
            rows = store.stats(conn, domain_ids, tag, events, start, end + timedelta(microseconds=1), resolution)
        by_bucket: dict[datetime, list[dict]] = {}
        for row in rows:
            by_bucket.setdefault(row["bucket"].replace(tzinfo=UTC), []).append(row)
        stats = []
        for bucket in periods:
            entry = {"time": rfc2822(bucket)}
            for event in events:
                entry[event] = shape(event, [r for r in by_bucket.get(bucket, []) if r["event"] == event])
            stats.append(entry)
        return {"start": rfc2822(start), "end": rfc2822(end), "resolution": resolution, "stats": stats}

    # tags -----------------------------------------------------------------------------------------
    def list_tags(self, domain: dict, params: dict[str, list[str]], base_url: str) -> dict:
        def one(name: str) -> str | None:
            values = params.get(name) or []
            return values[-1] if values else None

        try:
            limit = int(one("limit") or 100)
        except ValueError as ex:
            raise EventQueryError("limit must be an integer") from ex
        if not 1 <= limit <= 1000:
            raise EventQueryError("limit must be between 1 and 1000")
        prefix = one("prefix") or ""
        page = (one("page") or "").lower()
        pivot = one("tag")
        after = pivot if page == "next" and pivot is not None else None
        before = pivot if page == "previous" and pivot is not None else None
        if page == "last":
            before = "\U0010ffff"
        with self.db.transaction() as conn:
            rows = store.list_tags(conn, domain["id"], prefix=prefix, after=after, before=before, limit=limit)
        items = [_tag(r) for r in rows]

        def url(which: str, tag: str | None = None) -> str:
            from urllib.parse import urlencode

            query = {"page": which, "limit": limit}
            if tag is not None:
                query["tag"] = tag
            if prefix:
                query["prefix"] = prefix
            return f"{base_url}?{urlencode(query)}"

        return {
            "items": items,
            "paging": {
                "first": url("first"),
                "last": url("last"),
                "next": url("next", rows[-1]["tag"] if rows else (pivot or "")),
                "previous": url("previous", rows[0]["tag"] if rows else (pivot or "")),
            },
        }

    def get_tag(self, domain: dict, tag: str) -> dict | None:
        with self.db.transaction() as conn:
            row = store.get_tag(conn, domain["id"], tag)
        return _tag(row) if row else None

    def describe_tag(self, domain: dict, tag: str, description: str) -> bool:
        with self.db.transaction() as conn:
            return store.set_tag_description(conn, domain["id"], tag, description[:1024])

    def delete_tag(self, domain: dict, tag: str) -> bool:
        with self.db.transaction() as conn:
            return store.delete_tag(conn, domain["id"], tag)


def _tag(row: dict) -> dict:
    return {"tag": row["tag"], "description": row["description"],
            "first-seen": row["first_seen"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "last-seen": row["last_seen"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def shape(event: str, rows: list[dict]) -> dict:
    """Mailgun's per-event stats object."""
    total = sum(r["count"] for r in rows)
    if event == "accepted":
        incoming = sum(r["count"] for r in rows if r["method"] == INCOMING)
        return {"incoming": incoming, "outgoing": total - incoming, "total": total}
    if event == "delivered":
        by = Counter()
        for r in rows:
            by[r["method"]] += r["count"]
        return {"smtp": by["smtp"], "http": by["http"], "optimized": 0, "total": total}
    if event == "failed":
        permanent = {reason: 0 for reason in PERMANENT_REASONS}
        permanent["total"] = 0
        temporary = {"espblock": 0, "total": 0}
        for r in rows:
            if r["severity"] == "permanent":
                permanent["total"] += r["count"]
                if r["reason"] in permanent:
                    permanent[r["reason"]] += r["count"]
            else:
                temporary["total"] += r["count"]
                if r["reason"] == "espblock":
                    temporary["espblock"] += r["count"]
        return {"permanent": permanent, "temporary": temporary}
    return {"total": total}


def rfc2822(dt: datetime) -> str:
    """Mailgun's stats time format: 'Mon, 02 Jan 2006 15:04:05 UTC'."""
    return dt.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S UTC")


def stat_events(params: dict[str, list[str]]) -> list[str]:
    """The stats APIs' `event` parameter (repeated or comma-separated), each a stats event, in order."""
    events: list[str] = []
    for value in params.get("event") or []:
        for name in value.split(","):
            name = name.strip().lower()
            if name and name not in STAT_EVENTS:
                raise EventQueryError(f"'{name}' is not a valid event type; use one of {', '.join(STAT_EVENTS)}")
            if name and name not in events:
                events.append(name)
    if not events:
        raise EventQueryError("event is required")
    return events


def floor(dt: datetime, resolution: str) -> datetime:
    dt = dt.astimezone(UTC)
    if resolution == "hour":
        return dt.replace(minute=0, second=0, microsecond=0)
    if resolution == "day":
        return dt.replace(hour=0, minute=0, second=0, microsecond=0)
    return dt.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_bucket(dt: datetime, resolution: str) -> datetime:
    if resolution == "hour":
        return dt + timedelta(hours=1)
    if resolution == "day":
        return dt + timedelta(days=1)
    return dt.replace(year=dt.year + dt.month // 12, month=dt.month % 12 + 1)


def buckets(start: datetime, end: datetime, resolution: str) -> list[datetime]:
    out = []
    bucket = start
    while bucket <= end:
        out.append(bucket)
        if len(out) > MAX_BUCKETS:
            raise EventQueryError(f"the range covers more than {MAX_BUCKETS} {resolution}s; use a coarser resolution")
        bucket = next_bucket(bucket, resolution)
    return out


def minus_duration(end: datetime, value: str) -> datetime:
    """Mailgun's duration: '24h', '7d', '2m' (months)."""
    value = value.strip().lower()
    try:
        amount = int(value[:-1])
    except ValueError as ex:
        raise EventQueryError(f"'{value}' is not a valid duration: use e.g. 24h, 7d or 2m") from ex
    unit = value[-1]
    if not 0 <= amount <= 100_000 or unit not in "hdm":
        raise EventQueryError(f"'{value}' is not a valid duration: use e.g. 24h, 7d or 2m")
    if unit == "h":
        return end - timedelta(hours=amount)
    if unit == "d":
        return end - timedelta(days=amount)
    month = end.month - 1 - amount
    year, month = end.year + month // 12, month % 12 + 1
    day = min(end.day, calendar.monthrange(year, month)[1])
    return end.replace(year=year, month=month, day=day)
