"""Mailgun's analytics over the events store: POST /v1/analytics/metrics (and usage metrics), the
account-level /v1/analytics/tags, GET /v3/stats/filter and the provider/device/country aggregates.

Every count comes from one of two sources, chosen per query, and both classify an event the same
way (stats.dimensions, the rollup's own classifier), so they agree with each other and with the events:
- the stats rollups (event_stats_hourly + event_stats_pending) when the query needs only what they
  hold -- time, domain and tag, no unique counts: the cost depends on hours x domains x tags, not on
  how many events there are, and it covers the rollups' whole retention (hourly 2 months, daily a
  year, monthly after);
- otherwise one GROUP BY over the events table (partition-pruned by the time range, indexed by
  domain), so the other dimensions (ip, recipient domain/provider, device, country, bot) and unique
  opens/clicks are available within the events' retention.
A bucket is whole: an event counts in the query when its hour starts in [start, end] (start floored
to the resolution), on both paths.

Tenants: a query only ever reads the caller's domains (`_domains`); a domain filter naming another
account's domain matches nothing. Subaccounts will add themselves there (`_domains`) and as a dimension.
"""

from __future__ import annotations

import base64
import functools
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from envoi.events import analytics_store as sql
from envoi.events.errors import EventQueryError
from envoi.events.service import parse_time
from envoi.events.stats import (
    INCOMING,
    RESOLUTIONS,
    buckets,
    dimensions,
    floor,
    minus_duration,
    rfc2822,
    shape,
    stat_events,
)
from envoi.infra.db import Database

#: Mailgun's metric dimensions and how Envoi fills each; None: a Mailgun dimension Envoi does not record.
DIMENSIONS: dict[str, str | None] = {
    "time": "time", "domain": "domain", "tag": "tag", "ip": "ip", "recipient_domain": "recipient_domain",
    "recipient_provider": "recipient_domain", "country": "country", "device": "device", "bot": "bot",
    # a domain belongs to one account: the subaccount is read off the domain (rollups answer it too)
    "subaccount": "domain", "ip_pool": None,
}
UNRECORDED = {"ip_pool": "events do not record the sending IP pool (use the ip dimension)"}
ROLLUP_DIMENSIONS = {"time", "domain", "tag", "subaccount"}
# filters applied to the list of domains read, before any SQL
DOMAIN_FILTERS = ("domain", "subaccount")
COMPARATORS = ("=", "!=", "contains", "not contains")
UNKNOWN = "unknown"
TAG_LIMIT = 5000  # reported by /v1/analytics/tags/limits (Mailgun's default); Envoi does not refuse tags past it
DEFAULT_LIMIT = 1500
MAX_LIMIT = 1500
MAX_TAGS_PAGE = 1000


def _rate(part: int, whole: int) -> str:
    """Mailgun returns rates as strings: a percentage with two decimals here."""
    return f"{100.0 * part / whole:.2f}" if whole else "0.00"


def _bounced(c: Counter) -> int:
    return c["permanent"] - c["perm:suppress-bounce"] - c["perm:suppress-unsubscribe"] - c["perm:suppress-complaint"]


def _sent(c: Counter) -> int:
    return c["delivered"] + _bounced(c)


#: Metric -> its value from a group's counters (see _count). Formulas follow Mailgun's metric definitions
#: where they give one; docs/analytics.md lists them.
METRICS: dict[str, Callable[[Counter], int | str]] = {
    "accepted_incoming_count": lambda c: c["accepted_incoming"],
    "accepted_outgoing_count": lambda c: c["accepted_outgoing"],
    "accepted_count": lambda c: c["accepted_incoming"] + c["accepted_outgoing"],
    "delivered_smtp_count": lambda c: c["delivered_smtp"],
    "delivered_http_count": lambda c: c["delivered_http"],
    "delivered_optimized_count": lambda c: 0,  # Envoi has no send-time optimisation
    "delivered_count": lambda c: c["delivered"],
    "stored_count": lambda c: c["stored"],
    "processed_count": lambda c: c["accepted_outgoing"],
    "sent_count": _sent,
    "opened_count": lambda c: c["opened"],
    "unique_opened_count": lambda c: c["unique_opened"],
    "clicked_count": lambda c: c["clicked"],
    "unique_clicked_count": lambda c: c["unique_clicked"],
    "unsubscribed_count": lambda c: c["unsubscribed"],
    "complained_count": lambda c: c["complained"],
    "failed_count": lambda c: c["permanent"] + c["temporary"],
    "permanent_failed_count": lambda c: c["permanent"],
    "temporary_failed_count": lambda c: c["temporary"],
    "esp_block_count": lambda c: c["espblock"],
    "webhook_count": lambda c: c["perm:webhook"],
    "permanent_failed_optimized_count": lambda c: c["perm:optimized"],
    "permanent_failed_old_count": lambda c: c["perm:old"],
    "bounced_count": _bounced,
    "hard_bounces_count": lambda c: c["perm:bounce"],
    "delayed_bounce_count": lambda c: c["perm:delayed-bounce"],
    "soft_bounces_count": lambda c: _bounced(c) - c["perm:bounce"] - c["perm:delayed-bounce"],
    "suppressed_bounces_count": lambda c: c["perm:suppress-bounce"],
    "suppressed_unsubscribed_count": lambda c: c["perm:suppress-unsubscribe"],
    "suppressed_complaints_count": lambda c: c["perm:suppress-complaint"],
    "delivered_rate": lambda c: _rate(c["delivered"], _sent(c)),
    "opened_rate": lambda c: _rate(c["opened"], c["delivered"]),
    "unique_opened_rate": lambda c: _rate(c["unique_opened"], c["delivered"]),
    "clicked_rate": lambda c: _rate(c["clicked"], c["delivered"]),
    "unique_clicked_rate": lambda c: _rate(c["unique_clicked"], c["delivered"]),
    "unsubscribed_rate": lambda c: _rate(c["unsubscribed"], c["delivered"]),
    "complained_rate": lambda c: _rate(c["complained"], c["delivered"]),
    "bounce_rate": lambda c: _rate(_bounced(c), c["accepted_outgoing"]),
    "fail_rate": lambda c: _rate(c["permanent"] + c["temporary"], c["accepted_outgoing"]),
    "permanent_fail_rate": lambda c: _rate(c["permanent"], c["accepted_outgoing"]),
    "temporary_fail_rate": lambda c: _rate(c["temporary"], c["accepted_outgoing"]),
}
#: Mailgun metrics that need data Envoi does not keep (per-attempt delivery counts, the rate-limit
#: class merged into esp_block by the rollup): asked for, they get a 400 that says so.
NOT_COMPUTED = ("rate_limit_count", "delivered_first_attempt_count", "delayed_first_attempt_count",
                "delivered_subsequent_count", "delivered_two_plus_attempts_count", "delayed_rate")
UNIQUE_METRICS = {"unique_opened_count", "unique_clicked_count", "unique_opened_rate", "unique_clicked_rate"}
#: Usage metrics (POST /v1/analytics/usage/metrics): products Envoi does not have are truthfully 0.
USAGE_ZERO = ("accessibility_count", "accessibility_failed_count", "domain_blocklist_monitoring_count",
              "email_preview_count", "email_preview_failed_count", "image_validation_count",
              "image_validation_failed_count", "ip_blocklist_monitoring_count", "link_validation_count",
              "link_validation_failed_count", "seed_test_count")
USAGE_NOT_METERED = ("email_validation_count", "email_validation_public_count", "email_validation_valid_count",
                     "email_validation_single_count", "email_validation_bulk_count", "email_validation_list_count",
                     "email_validation_mailgun_count", "email_validation_mailjet_count")
USAGE_DIMENSIONS = ("time",)

#: Mailbox providers by recipient domain, for the recipient_provider dimension (others: "Other").
PROVIDERS = {
    "gmail.com": "Gmail", "googlemail.com": "Gmail",
    "outlook.com": "Microsoft", "hotmail.com": "Microsoft", "live.com": "Microsoft", "msn.com": "Microsoft",
    "hotmail.co.uk": "Microsoft", "outlook.fr": "Microsoft", "hotmail.fr": "Microsoft", "live.fr": "Microsoft",
    "yahoo.com": "Yahoo", "ymail.com": "Yahoo", "yahoo.co.uk": "Yahoo", "yahoo.fr": "Yahoo", "rocketmail.com": "Yahoo",
    "aol.com": "AOL", "icloud.com": "Apple", "me.com": "Apple", "mac.com": "Apple",
    "gmx.de": "GMX", "gmx.net": "GMX", "gmx.com": "GMX", "web.de": "Web.de", "orange.fr": "Orange",
    "free.fr": "Free", "laposte.net": "La Poste", "proton.me": "Proton", "protonmail.com": "Proton",
    "yandex.ru": "Yandex", "mail.ru": "Mail.ru", "zoho.com": "Zoho", "comcast.net": "Comcast",
}


def provider(recipient_domain: str | None) -> str:
    return PROVIDERS.get((recipient_domain or "").lower(), "Other") if recipient_domain else UNKNOWN


@dataclass(frozen=True)
class Filter:
    attribute: str
    comparator: str
    values: tuple[str, ...]

    def matches(self, value: str) -> bool:
        if self.comparator in ("=", "!="):
            hit = value in self.values
        else:
            hit = any(v.lower() in value.lower() for v in self.values)
        return hit if self.comparator in ("=", "contains") else not hit


@dataclass
class Query:
    start: datetime  # floored to the resolution
    end: datetime  # as asked (the last bucket is the one holding it)
    resolution: str
    dims: list[str]
    metrics: list[str]
    filters: list[Filter] = field(default_factory=list)
    events: tuple[str, ...] = ()  # which events to read; () = every event a metric needs
    include_subaccounts: bool = False  # Mailgun's: the subaccounts' domains are read too

    @property
    def end_exclusive(self) -> datetime:
        return self.end.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


# parsing ------------------------------------------------------------------------------------------
def _text(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise EventQueryError(f"'{name}' must be a string")
    return str(value)


def strings(body: dict, name: str) -> list[str]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EventQueryError(f"'{name}' must be a list of strings")
    return [v.strip() for v in value if v.strip()]


def flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise EventQueryError(f"'{name}' must be true or false")
    return value


def body_time(body: dict, name: str) -> datetime | None:
    value = _text(body, name)
    if value is None:
        return None
    if value.rstrip().endswith("-0000"):  # mailgun.js's logs dates; RFC 2822's "unknown zone" is UTC here
        value = value.rstrip()[:-5] + "+0000"
    try:
        return datetime.fromtimestamp(parse_time(value), UTC)
    except EventQueryError as ex:
        raise EventQueryError(f"Invalid format for parameter {name}: {value} (use RFC 2822)") from ex


def time_range(body: dict, resolution: str, default: timedelta) -> tuple[datetime, datetime]:
    """(start floored to the resolution, end) from Mailgun's start / end / duration."""
    end = body_time(body, "end") or datetime.now(UTC)
    if duration := _text(body, "duration"):
        start = minus_duration(end, duration)  # the stats API's grammar: 24h, 7d, 2m
    else:
        start = body_time(body, "start") or end - default
    if start > end:
        raise EventQueryError("start must be before end")
    return floor(start, resolution), end


def parse_filter(body: dict, known: dict) -> list[Filter]:
    """Mailgun's filter: {"AND": [{"attribute", "comparator", "values": [{"label", "value"}]}]}."""
    raw = body.get("filter")
    if raw is None or raw == {}:
        return []
    if not isinstance(raw, dict) or set(raw) - {"AND"} or not isinstance(raw.get("AND"), list):
        raise EventQueryError("filter must be an object {\"AND\": [{\"attribute\", \"comparator\", \"values\"}]}")
    out = []
    for predicate in raw["AND"]:
        if not isinstance(predicate, dict):
            raise EventQueryError("each filter predicate must be an object with attribute, comparator and values")
        attribute, comparator = predicate.get("attribute"), predicate.get("comparator")
        if attribute not in known:
            raise EventQueryError(f"'{attribute}' is not a valid filter attribute; use one of {', '.join(known)}")
        if known[attribute] is None:
            raise EventQueryError(f"filter attribute '{attribute}' is not available: {UNRECORDED[attribute]}")
        if comparator not in COMPARATORS:
            raise EventQueryError(f"'{comparator}' is not a valid comparator; use one of {', '.join(COMPARATORS)}")
        values = predicate.get("values")
        if not isinstance(values, list) or not values:
            raise EventQueryError(f"filter on '{attribute}' needs a non-empty list of values")
        parsed = []
        for value in values:
            v = value.get("value") if isinstance(value, dict) else value
            if not isinstance(v, str) or len(v) > 1024 or "\x00" in v:
                raise EventQueryError(f"filter on '{attribute}': each value must be {{\"value\": \"...\"}}")
            parsed.append(v)
        out.append(Filter(attribute, comparator, tuple(parsed)))
    return out


def body_resolution(body: dict) -> str:
    """A JSON query body's `resolution` (hour, day or month; day by default), the body checked first."""
    if not isinstance(body, dict):
        raise EventQueryError("the request body must be a JSON object")
    resolution = (_text(body, "resolution") or "day").lower()
    if resolution not in RESOLUTIONS:
        raise EventQueryError("resolution must be one of hour, day, month")
    return resolution


def parse_metrics_query(body: dict) -> tuple[Query, dict]:
    resolution = body_resolution(body)
    dims = strings(body, "dimensions")
    for d in dims:
        if d not in DIMENSIONS:
            raise EventQueryError(f"'{d}' is not a valid dimension; use one of {', '.join(DIMENSIONS)}")
        if DIMENSIONS[d] is None:
            raise EventQueryError(f"dimension '{d}' is not available: {UNRECORDED[d]}")
    if len(set(dims)) != len(dims):
        raise EventQueryError("a dimension is listed twice")
    metrics = strings(body, "metrics")
    for m in metrics:
        if m in NOT_COMPUTED:
            raise EventQueryError(f"metric '{m}' is not computed by Envoi (it needs per-attempt data the events "
                                  "do not keep)")
        if m not in METRICS:
            raise EventQueryError(f"'{m}' is not a valid metric")
    if not metrics:
        raise EventQueryError("metrics is required: name at least one metric, e.g. delivered_count")
    start, end = time_range(body, resolution, timedelta(days=7))
    filters = parse_filter(body, {k: v for k, v in DIMENSIONS.items() if k != "time"})  # time: start/end
    query = Query(start, end, resolution, dims, list(dict.fromkeys(metrics)), filters,
                  include_subaccounts=flag(body, "include_subaccounts"))
    return query, _pagination(body, [*dims, *metrics], DEFAULT_LIMIT, MAX_LIMIT)


def _pagination(body: dict, sortable: list[str], default: int, maximum: int) -> dict:
    raw = body.get("pagination") or {}
    if not isinstance(raw, dict):
        raise EventQueryError("pagination must be an object {sort, skip, limit}")
    sort = raw.get("sort") or ""
    if not isinstance(sort, str):
        raise EventQueryError("pagination.sort must be a string such as 'time:asc'")
    if sort:
        name, _, direction = sort.partition(":")
        if name not in sortable or direction.lower() not in ("", "asc", "desc"):
            raise EventQueryError(f"cannot sort by '{sort}': use <name>:asc|desc with one of {', '.join(sortable)}")
    skip, limit = raw.get("skip", 0), raw.get("limit", default)
    for name, value in (("skip", skip), ("limit", limit)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise EventQueryError(f"pagination.{name} must be a non-negative integer")
    if not 1 <= limit <= maximum:
        raise EventQueryError(f"pagination.limit must be between 1 and {maximum}")
    return {"sort": sort, "skip": skip, "limit": limit}


# counting ---------------------------------------------------------------------------------------
def _count(c: Counter, event: str, severity: str, reason: str, method: str, n: int, uniq: int) -> None:
    """Add one classified group (stats.dimensions' (event, severity, reason, method)) to counters."""
    if event == "accepted":
        c["accepted_incoming" if method == INCOMING else "accepted_outgoing"] += n
    elif event == "delivered":
        c["delivered"] += n
        if method in ("smtp", "http"):
            c[f"delivered_{method}"] += n
    elif event == "failed":
        if severity == "permanent":
            c["permanent"] += n
            c[f"perm:{reason}"] += n
        else:
            c["temporary"] += n
            if reason == "espblock":
                c["espblock"] += n
    elif event in ("opened", "clicked"):
        c[event] += n
        c[f"unique_{event}"] += uniq
    else:
        c[event] += n


class Analytics:
    def __init__(self, db: Database):
        self.db = db

    # the engine ---------------------------------------------------------------------------------
    def groups(self, account_id: int, query: Query, *, unique: bool = False, source: str | None = None
               ) -> tuple[dict[tuple, Counter], dict[int, str], str]:
        """Counters per combination of the query's dimension values (filters applied), the account's
        domain names by id, and which source answered ('rollup' or 'events')."""
        with self.db.transaction() as conn:
            owned = sql.domain_owners(conn, account_id, include_subaccounts=query.include_subaccounts)
            domains = {r["id"]: r["name"] for r in owned}
            owners = {r["id"]: str(r["account_id"]) for r in owned}  # the subaccount dimension's value
            domain_ids = list(domains)
            for f in query.filters:
                if f.attribute == "domain":
                    domain_ids = [i for i in domain_ids if f.matches(domains[i])]
                elif f.attribute == "subaccount":
                    domain_ids = [i for i in domain_ids if f.matches(owners[i])]
            tag_filters = [f for f in query.filters if f.attribute == "tag"]
            rollup = (not unique and set(query.dims) <= ROLLUP_DIMENSIONS
                      and all(f.attribute in (*DOMAIN_FILTERS, "tag") for f in query.filters)
                      and ("tag" in query.dims or not tag_filters
                           or (len(tag_filters) == 1 and tag_filters[0].comparator == "="
                               and len(tag_filters[0].values) == 1)))
            source = source or ("rollup" if rollup else "events")
            if not domain_ids:
                return {}, domains, source
            raw_dims = list(dict.fromkeys(DIMENSIONS[d] for d in query.dims))
            # filtered attributes are grouped on too (and checked below), except those done in SQL
            sql_done = set(DOMAIN_FILTERS) | ({"tag"} if "tag" not in query.dims else set())
            for f in query.filters:
                if f.attribute not in sql_done and DIMENSIONS[f.attribute] not in raw_dims:
                    raw_dims.append(DIMENSIONS[f.attribute])
            if source == "rollup":
                tag = None
                if "tag" not in query.dims and tag_filters:
                    tag = tag_filters[0].values[0]
                rows = sql.rollup_groups(conn, domain_ids, raw_dims, query.resolution, query.start,
                                         query.end_exclusive, tag=tag, events=list(query.events) or None)
            else:
                rows = sql.event_groups(conn, domain_ids, raw_dims, query.resolution, query.start,
                                        query.end_exclusive, unique=unique,
                                        tag_filters=[] if "tag" in query.dims else
                                        [(f.comparator, list(f.values)) for f in tag_filters],
                                        events=list(query.events) or None)
        out: dict[tuple, Counter] = {}
        for row in rows:
            values = {d: _display(d, row, domains, owners) for d in
                      set(query.dims) | {f.attribute for f in query.filters if f.attribute not in sql_done}}
            if not all(f.matches(values[f.attribute]) for f in query.filters
                       if f.attribute not in sql_done):
                continue
            key = tuple(values[d] for d in query.dims)
            event, severity, reason, method = dimensions(_raw_event(row)) if source == "events" else (
                row["event"], row["severity"], row["reason"], row["method"])
            _count(out.setdefault(key, Counter()), event, severity, reason, method, row["n"], row.get("uniq") or 0)
        return out, domains, source

    # POST /v1/analytics/metrics ----------------------------------------------------------------------
    def metrics(self, account_id: int, body: dict) -> dict:
        query, page = parse_metrics_query(body)
        unique = bool(UNIQUE_METRICS & set(query.metrics))
        groups, _, _ = self.groups(account_id, query, unique=unique)
        if query.dims == ["time"]:  # a time series has every bucket, the empty ones at zero
            for bucket in buckets(query.start, query.end, query.resolution):
                groups.setdefault((_time_value(bucket),), Counter())
        items = [{"dims": key, "counters": c} for key, c in groups.items()]
        labels = {}
        if "subaccount" in query.dims:  # its display_value is the account's name, its value the id
            index = query.dims.index("subaccount")
            with self.db.transaction() as conn:
                names = sql.account_names(conn, list({int(k[index]) for k in groups if k[index] != UNKNOWN}))
            labels = {str(i): name for i, name in names.items()}
        result = self._page(query, items, page, labels)
        aggregate: Counter = Counter()
        if flag(body, "include_aggregates"):
            if unique and query.dims:  # a unique recipient may appear in several groups: count once
                totals, _, _ = self.groups(account_id, Query(
                    query.start, query.end, query.resolution, [], query.metrics, query.filters,
                    include_subaccounts=query.include_subaccounts), unique=True)
                aggregate = totals.get((), Counter())
            else:
                for c in groups.values():
                    aggregate.update(c)
        result["aggregates"] = {"metrics": {m: METRICS[m](aggregate) for m in query.metrics}}
        return result

    def _page(self, query: Query, items: list[dict], page: dict, labels: dict[str, str] | None = None) -> dict:
        sort = page["sort"] or (f"{query.dims[0]}:asc" if query.dims else "")
        if sort:
            name, _, direction = sort.partition(":")
            if name in query.dims:
                index = query.dims.index(name)
                keyf = (lambda it: _sort_time(it["dims"][index])) if name == "time" else (
                    lambda it: it["dims"][index])
            else:
                def keyf(it):
                    value = METRICS[name](it["counters"])
                    return float(value) if isinstance(value, str) else value
            items.sort(key=lambda it: tuple(_sort_time(v) if d == "time" else v
                                            for d, v in zip(query.dims, it["dims"], strict=True)))
            items.sort(key=keyf, reverse=direction.lower() == "desc")
        total = len(items)
        shown = items[page["skip"]:page["skip"] + page["limit"]]
        return {
            "start": _time_value(query.start), "end": _time_value(query.end), "resolution": query.resolution,
            "dimensions": query.dims,
            "items": [{"dimensions": [{"dimension": d, "value": v,
                                       "display_value": (labels or {}).get(v, v) if d == "subaccount" else v}
                                      for d, v in zip(query.dims, it["dims"], strict=True)],
                       "metrics": {m: METRICS[m](it["counters"]) for m in query.metrics}} for it in shown],
            "pagination": {"sort": sort, "skip": page["skip"], "limit": page["limit"], "total": total},
        }

    # POST /v1/analytics/usage/metrics ----------------------------------------------------------------
    def usage(self, account_id: int, body: dict) -> dict:
        resolution = body_resolution(body)
        dims = strings(body, "dimensions")
        for d in dims:
            if d not in USAGE_DIMENSIONS:
                raise EventQueryError(f"'{d}' is not a valid usage dimension; use time")
        metrics = strings(body, "metrics")
        for m in metrics:
            if m in USAGE_NOT_METERED:
                raise EventQueryError(f"usage metric '{m}' is not metered by Envoi yet")
            if m != "processed_count" and m not in USAGE_ZERO:
                raise EventQueryError(f"'{m}' is not a valid usage metric")
        if not metrics:
            raise EventQueryError("metrics is required: name at least one usage metric, e.g. processed_count")
        start, end = time_range(body, resolution, timedelta(days=7))
        query = Query(start, end, resolution, dims, ["processed_count"], events=("accepted",),
                      include_subaccounts=flag(body, "include_subaccounts"))
        groups, _, _ = self.groups(account_id, query)
        if dims == ["time"]:
            for bucket in buckets(start, end, resolution):
                groups.setdefault((_time_value(bucket),), Counter())

        def values(c: Counter) -> dict:
            return {m: (c["accepted_outgoing"] if m == "processed_count" else 0) for m in metrics}

        items = sorted(groups.items(), key=lambda kv: tuple(_sort_time(v) for v in kv[0]))
        page = _pagination(body, [*dims, *metrics], DEFAULT_LIMIT, MAX_LIMIT)
        total = Counter()
        for _, c in items:
            total.update(c)
        shown = items[page["skip"]:page["skip"] + page["limit"]]
        return {
            "start": _time_value(start), "end": _time_value(end), "resolution": resolution, "dimensions": dims,
            "items": [{"dimensions": [{"dimension": d, "value": v, "display_value": v} for d, v in zip(dims, k,
                                                                                                      strict=True)],
                       "metrics": values(c)} for k, c in shown],
            "aggregates": {"metrics": values(total) if flag(body, "include_aggregates") else {}},
            "pagination": {"sort": page["sort"] or ("time:asc" if dims else ""), "skip": page["skip"],
                           "limit": page["limit"], "total": len(items)},
        }

    # aggregates: /v3/{domain}/aggregates/{kind}, /v3/{domain}/tags/{tag}/stats/aggregates/{kind} ------
    AGGREGATES = {"providers": ("recipient_domain", ("accepted", "delivered")),
                  "devices": ("device", ()), "countries": ("country", ())}

    def aggregates(self, domain: dict, kind: str, params: dict[str, list[str]], tag: str | None = None) -> dict:
        """Mailgun's provider (recipient domain), device and country breakdowns of engagement."""
        dim, extra = self.AGGREGATES[kind]
        body = {k: v[-1] for k, v in params.items() if k in ("start", "end", "duration") and v}
        start, end = time_range(body, "hour", timedelta(days=30))
        filters = [Filter("domain", "=", (domain["name"],))]
        if tag is not None:
            filters.append(Filter("tag", "=", (tag,)))
        query = Query(start, end, "hour", [dim], [], filters)
        groups, _, _ = self.groups(domain["account_id"], query, unique=True, source="events")
        out = {}
        for (value,), c in sorted(groups.items()):
            entry = {e: c[e] if e != "accepted" else c["accepted_outgoing"] + c["accepted_incoming"] for e in extra}
            entry.update({"clicked": c["clicked"], "complained": c["complained"], "opened": c["opened"],
                          "unique_clicked": c["unique_clicked"], "unique_opened": c["unique_opened"],
                          "unsubscribed": c["unsubscribed"]})
            if kind == "providers" or any(entry.values()):  # devices/countries: engagement only
                out[value.lower() if kind == "countries" else value] = entry
        result = {kind: out}
        if tag is not None:
            result["tag"] = tag
        return result

    # GET /v3/stats/filter -------------------------------------------------------------------------------
    GROUPS = {"total": None, "time": "time", "day": "time", "month": "time", "domain": "domain", "ip": "ip",
              "provider": "recipient_domain", "tag": "tag", "country": "country"}

    def stats_filter(self, account_id: int, params: dict[str, list[str]]) -> dict:
        def one(name: str) -> str | None:
            values = [v for v in params.get(name) or [] if v.strip()]
            return values[-1].strip() if values else None

        events = stat_events(params)
        group = (one("group") or "total").lower()
        if group not in self.GROUPS:
            raise EventQueryError(f"group must be one of {', '.join(self.GROUPS)}")
        resolution = (one("resolution") or "day").lower()
        if group in ("day", "month"):
            resolution = group
        if resolution not in RESOLUTIONS:
            raise EventQueryError("resolution must be one of hour, day, month")
        filters = []
        keys = {"domain": "domain", "tag": "tag", "ip": "ip", "provider": "recipient_domain", "country": "country"}
        for value in params.get("filter") or []:
            key, sep, wanted = value.partition(":")
            if not sep or key.strip().lower() not in keys or not wanted.strip():
                raise EventQueryError(f"'{value}' is not a valid filter: use key:value with key one of "
                                      f"{', '.join(keys)}")
            attribute = keys[key.strip().lower()]
            filters.append(Filter("recipient_domain" if attribute == "recipient_domain" else attribute, "=",
                                  (wanted.strip(),)))
        body = {k: one(k) for k in ("start", "end", "duration") if one(k)}
        start, end = time_range(body, resolution, timedelta(days=7))
        dim = self.GROUPS[group]
        dims = (["time"] if group != "total" else []) + ([dim] if dim not in (None, "time") else [])
        query = Query(start, end, resolution, dims, [], filters, events=tuple(events))
        groups, _, source = self.groups(account_id, query)
        rows = []
        for key, c in groups.items():
            values = dict(zip(dims, key, strict=True))
            rows.append((values, c))
        if group in ("time", "day", "month"):
            present = {v["time"] for v, _ in rows}
            rows += [({"time": _time_value(b)}, Counter()) for b in buckets(start, end, resolution)
                     if _time_value(b) not in present]
        rows.sort(key=lambda r: (_sort_time(r[0].get("time", "")) if "time" in r[0] else datetime.min.replace(
            tzinfo=UTC), str(r[0].get(dim or "", ""))))
        stats = []
        for values, c in rows:
            entry: dict = {"time": rfc2822(_sort_time(values["time"])) if "time" in values else rfc2822(start)}
            if dim not in (None, "time"):
                entry[group] = values[dim]
            for event in events:
                entry[event] = shape(event, _shape_rows(event, c))
            stats.append(entry)
        if group == "total" and not stats:
            stats = [{"time": rfc2822(start), **{e: shape(e, []) for e in events}}]
        return {"description": "", "start": rfc2822(start), "end": rfc2822(end), "resolution": resolution,
                "type": {"key": group}, "stats": stats}

    # /v1/analytics/tags -----------------------------------------------------------------------------------
    def list_tags(self, account_id: int, body: dict) -> dict:
        if not isinstance(body, dict):
            raise EventQueryError("the request body must be a JSON object")
        prefix = _text(body, "tag") or ""
        raw = body.get("pagination") or {}
        if not isinstance(raw, dict):
            raise EventQueryError("pagination must be an object {sort, skip, limit}")
        include_metrics = flag(body, "include_metrics")
        page = _pagination(body, ["tag", "lastseen", "firstseen"], 10, 20 if include_metrics else MAX_TAGS_PAGE)
        name, _, direction = (page["sort"] or "tag:asc").partition(":")
        order = {"tag": "tag", "lastseen": "last_seen", "firstseen": "first_seen"}[name]
        with self.db.transaction() as conn:
            account = sql.account_name(conn, account_id)
            rows, total = sql.account_tags(conn, account_id, prefix=prefix, order=order,
                                           descending=direction.lower() == "desc", skip=page["skip"],
                                           limit=page["limit"])
        metrics: dict[str, dict] = {}
        if include_metrics and rows:
            first = min(r["first_seen"] for r in rows)
            # from the month's start: rollup rows older than 2 months are day or month buckets
            query = Query(floor(first, "month"), datetime.now(UTC), "hour", ["tag"], [],
                          [Filter("tag", "=", tuple(r["tag"] for r in rows))])
            groups, _, _ = self.groups(account_id, query)
            names = ("accepted_count", "delivered_count", "failed_count", "opened_count", "clicked_count",
                     "unsubscribed_count", "complained_count", "delivered_rate", "opened_rate", "clicked_rate")
            metrics = {key[0]: {m: METRICS[m](c) for m in names} for key, c in groups.items()}
        items = [{"account_id": str(account_id), "parent_account_id": "", "account_name": account,
                  "tag": r["tag"], "description": r["description"] or "",
                  "first_seen": _iso(r["first_seen"]), "last_seen": _iso(r["last_seen"]),
                  "metrics": metrics.get(r["tag"], {})} for r in rows]
        pagination = {"sort": page["sort"] or "tag:asc", "skip": page["skip"], "limit": page["limit"]}
        if isinstance(raw.get("include_total"), bool) and raw["include_total"]:
            pagination["total"] = total
        return {"items": items, "pagination": pagination}

    def describe_tag(self, account_id: int, tag: str, description: str) -> bool:
        with self.db.transaction() as conn:
            return sql.describe_account_tag(conn, account_id, tag, description[:1024])

    def delete_tag(self, account_id: int, tag: str) -> bool:
        with self.db.transaction() as conn:
            return sql.delete_account_tag(conn, account_id, tag)

    def tag_limits(self, account_id: int) -> dict:
        with self.db.transaction() as conn:
            count = sql.account_tag_count(conn, account_id)
        return {"limit": TAG_LIMIT, "count": count, "limit_reached": count >= TAG_LIMIT}


def _shape_rows(event: str, c: Counter) -> list[dict]:
    """Counters back into the rollup's (event, severity, reason, method, count) rows stats.shape reads."""
    if event == "accepted":
        return [{"method": INCOMING, "count": c["accepted_incoming"], "severity": "", "reason": ""},
                {"method": "", "count": c["accepted_outgoing"], "severity": "", "reason": ""}]
    if event == "delivered":
        return [{"method": m, "count": c[f"delivered_{m}"], "severity": "", "reason": ""} for m in ("smtp", "http")] + [
            {"method": "", "count": c["delivered"] - c["delivered_smtp"] - c["delivered_http"], "severity": "",
             "reason": ""}]
    if event == "failed":
        rows = [{"method": "", "severity": "permanent", "reason": k[5:], "count": n}
                for k, n in c.items() if k.startswith("perm:")]
        rows += [{"method": "", "severity": "temporary", "reason": "espblock", "count": c["espblock"]},
                 {"method": "", "severity": "temporary", "reason": "", "count": c["temporary"] - c["espblock"]}]
        return rows
    return [{"method": "", "severity": "", "reason": "", "count": c[event]}]


def _raw_event(row: dict) -> dict:
    """The fields stats.dimensions reads, rebuilt from an events-table group."""
    data = {"event": row["event"], "severity": row["severity"], "reason": row["reason"], "method": row["method"],
            "delivery-status": {"bounce-class": row["bounce_class"]}, "flags": {"is-routed": row["routed"]}}
    if row["list"]:
        data["mailing-list"] = True
    return data


def _display(dim: str, row: dict, domains: dict[int, str], owners: dict[int, str]) -> str:
    if dim == "time":
        return _time_value(row["time"].replace(tzinfo=UTC))
    if dim == "domain":
        return domains.get(row["domain"], UNKNOWN)
    if dim == "subaccount":
        return owners.get(row["domain"], UNKNOWN)
    if dim == "recipient_provider":
        return provider(row.get("recipient_domain"))
    value = row.get(DIMENSIONS[dim])
    # no value, or tracking's "Unknown" (no GeoIP source): one "unknown" group
    return str(value) if value not in (None, "") and str(value).lower() != UNKNOWN else UNKNOWN


def _time_value(dt: datetime) -> str:
    """Mailgun's metrics time format: 'Tue, 24 Sep 2024 00:00:00 +0000'."""
    return dt.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")


@functools.lru_cache(maxsize=4096)  # strptime is most of a small query's Python time
def _sort_time(value: str) -> datetime:
    return datetime.strptime(value, "%a, %d %b %Y %H:%M:%S %z")


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def encode_token(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_token(token: str) -> dict:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(data, dict):
            raise ValueError(token)
        return data
    except ValueError as ex:
        raise EventQueryError("invalid pagination token") from ex
