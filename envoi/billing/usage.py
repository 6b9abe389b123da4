"""Usage: what an account sent, for billing, from Postgres (never the quota counters in Redis).

The stats rollups count `accepted` per domain per hour in the events' own transaction
(envoi.events.stats): an account's accepted count over a UTC day or a billing period is their sum
(folded rows plus those still pending a fold). Recipients, as Mailgun bills.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from envoi.billing.plans import Plan
from envoi.infra.db import Database


def day_period(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def month_period(day: date) -> tuple[datetime, datetime]:
    """The calendar month (UTC) holding `day`: the billing period unless Stripe's says otherwise."""
    start = datetime(day.year, day.month, 1, tzinfo=UTC)
    return start, datetime(day.year + day.month // 12, day.month % 12 + 1, 1, tzinfo=UTC)


def overage(plan: Plan, accepted: int) -> tuple[int, int]:
    """(messages beyond the included volume, their price in the smallest currency unit so far)."""
    beyond = max(0, accepted - plan.included_per_month)
    if plan.overage_per_1000 is None:
        return beyond, 0
    return beyond, -(-beyond * plan.overage_per_1000 // 1000)  # rounded up to the cent


class Usage:
    def __init__(self, db: Database):
        self.db = db

    def accepted(self, account_id: int, period: tuple[datetime, datetime]) -> int:
        """Recipients the account had accepted in [start, end)."""
        with self.db.transaction() as conn:
            return accepted_in_period(conn, account_id, *period)

    def day(self, account_id: int, day: date | None = None) -> int:
        return self.accepted(account_id, day_period(day or datetime.now(UTC).date()))

    def month(self, account_id: int, day: date | None = None,
              period: tuple[datetime, datetime] | None = None) -> int:
        """This billing period's count: `period` when Stripe gave one, else the calendar month of `day`."""
        return self.accepted(account_id, period or month_period(day or datetime.now(UTC).date()))


def accepted_in_period(conn, account_id: int, start: datetime, end: datetime) -> int:
    """Recipients the account had accepted for sending in the period [start, end), from the stats rollups
    (folded and pending); mail received for its routes (method 'incoming') is not sending. Rollups are
    hourly: an hour belongs to the period its end falls in, so each hour is counted in exactly one period and the hour a subscription starts in counts in its first period.
    Aligned periods (UTC days and months) read the same as [start, end) by hour; a Stripe period may
    start mid-hour."""
    row = conn.execute(
        "SELECT coalesce(sum(count), 0) AS n FROM ("
        " SELECT count FROM event_stats_hourly WHERE account_id = %(a)s AND event = 'accepted' AND tag = ''"
        "   AND method <> 'incoming' AND hour > %(s)s - interval '1 hour' AND hour <= %(e)s - interval '1 hour'"
        " UNION ALL"
        " SELECT count FROM event_stats_pending WHERE account_id = %(a)s AND event = 'accepted' AND tag = ''"
        "   AND method <> 'incoming' AND hour > %(s)s - interval '1 hour' AND hour <= %(e)s - interval '1 hour') AS c",
        {"a": account_id, "s": start, "e": end}).fetchone()
    return int(row["n"])
