"""Quotas at accept: a plan's daily cap (UTC day) and monthly hard cap, counted in recipients (Mailgun
counts a message per recipient) with one atomic check-and-add in Redis per message. A message over
what remains is refused whole; one that then fails to commit gives its count back.

While Redis is unreachable each process counts on its own (LocalCounters) from zero: a cap still
holds per process, not across them. Billing truth is Postgres (envoi.billing.usage), not these counters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from envoi.billing.errors import MonthlyQuotaExceeded, QuotaExceeded
from envoi.billing.plans import Plan, Plans
from envoi.infra.local_counters import LocalCounters
from envoi.infra.redis import BoundedCounters, RedisError

log = logging.getLogger(__name__)
DAY = 86400


def _nothing() -> None:
    pass


def next_day(now: datetime) -> datetime:
    return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)


def next_month(now: datetime) -> datetime:
    return datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)


class Quota:
    def __init__(self, plans: Plans, counters: BoundedCounters, region: str, *,
                 clock: Callable[[], float] = time.time):
        self.plans = plans
        self.counters = counters
        self.prefix = f"envoi:{region}:quota"
        self.clock = clock
        # Keys name their day or month, so one long window serves both.
        self.local = LocalCounters(window=32 * DAY)
        self._period: tuple[int, tuple] = (-1, ())  # PERF: the current second's day, month and resets
        # After a Redis error, count locally for a while rather than make every accept wait out a timeout.
        self.retry_redis_after = 5.0
        self._redis_down_until = 0.0

    def _periods(self) -> tuple[datetime, str, str, datetime, datetime, int, int]:
        """(now, day, month, next midnight, next month, their lifetimes): worked out once a second."""
        second = int(self.clock())
        if self._period[0] != second:
            now = datetime.fromtimestamp(second, UTC)
            ends = next_day(now), next_month(now)
            ttls = [int((end - now).total_seconds()) + DAY for end in ends]  # a day's grace, for the CLI
            self._period = (second, (now, f"{now:%Y%m%d}", f"{now:%Y%m}", *ends, *ttls))
        return self._period[1]

    def keys(self, account_id: int, now: datetime) -> tuple[str, str]:
        """The account's counters of the UTC day and month of `now`."""
        return self._keys(account_id, f"{now:%Y%m%d}", f"{now:%Y%m}")

    def _keys(self, account_id: int, day: str, month: str) -> tuple[str, str]:
        return f"{self.prefix}:{account_id}:day:{day}", f"{self.prefix}:{account_id}:month:{month}"

    def reserve(self, account_id: int, plan_name: str | None, n: int, domain_name: str, *,
                monthly_limit: int | None = None, plan_caps: bool = True) -> Callable[[], None]:
        """Count n recipients against the account's caps, or raise QuotaExceeded (nothing counted).
        Returns what gives them back. monthly_limit: the account's custom monthly sending limit
        (Mailgun's, set by itself or its parent), held with the plan's monthly cap in one counter;
        plan_caps=False: the plan's caps do not apply (billing off). No cap at all costs nothing (no Redis)."""
        plan = self.plans.get(plan_name)
        daily_cap, monthly_cap = (plan.daily_cap, plan.monthly_cap) if plan_caps else (None, None)
        custom = monthly_limit is not None and (monthly_cap is None or monthly_limit < monthly_cap)
        if custom:
            monthly_cap = monthly_limit
        if daily_cap is None and monthly_cap is None:
            return _nothing
        now, day, month, day_ends, month_ends, day_ttl, month_ttl = self._periods()
        day_key, month_key = self._keys(account_id, day, month)
        ends = (day_ends, month_ends)
        counters = [(day_key, daily_cap, day_ttl), (month_key, monthly_cap, month_ttl)]
        local = time.monotonic() < self._redis_down_until
        if not local:
            try:
                refused = self.counters.add_within(counters, n)
            except RedisError as ex:
                log.warning("quota: %s (counting in this process for %.0f s)", ex, self.retry_redis_after)
                self._redis_down_until = time.monotonic() + self.retry_redis_after
                local = True
        if local:
            refused = self.local.add_within([(k, limit) for k, limit, _ in counters], n)
        if refused is not None:
            if refused == 1 and custom:
                raise self._limit_reached(monthly_cap, n, domain_name, now, ends[1])
            raise self._exceeded(plan, refused, n, domain_name, now, ends[refused])
        return lambda: self._release([day_key, month_key], n, local)

    def _release(self, keys: list[str], n: int, local: bool) -> None:
        if not local:
            try:
                self.counters.subtract(keys, n)
                return
            except RedisError as ex:
                log.warning("quota: giving back %d: %s", n, ex)
        for key in keys:
            self.local.subtract(key, n)

    def used(self, account_id: int, now: datetime | None = None) -> tuple[int, int] | None:
        """Recipients counted today and this month (None: Redis cannot say)."""
        now = now or datetime.fromtimestamp(self.clock(), UTC)
        try:
            return tuple(self.counters.get(key) for key in self.keys(account_id, now))  # type: ignore[return-value]
        except RedisError:
            return None

    @staticmethod
    def _exceeded(plan: Plan, which: int, n: int, domain_name: str, now: datetime,
                  resets: datetime) -> QuotaExceeded:
        cap, period, error = ((plan.daily_cap, "a day (UTC)", QuotaExceeded) if which == 0 else
                              (plan.monthly_cap, "a month", MonthlyQuotaExceeded))
        recipients = "recipient" if n == 1 else "recipients"
        message = (f"Domain {domain_name} is not allowed to send: recipient limit exceeded (the {plan.title}"
                   f" plan sends at most {cap:,} messages {period}; this message has {n:,} {recipients} and"
                   f" nothing of it was accepted), try again after {resets:%a, %d %b %Y %H:%M:%S} UTC")
        return error(message, retry_after=max(1, int((resets - now).total_seconds())))


    @staticmethod
    def _limit_reached(limit: int, n: int, domain_name: str, now: datetime, resets: datetime) -> QuotaExceeded:
        recipients = "recipient" if n == 1 else "recipients"
        message = (f"Domain {domain_name} is not allowed to send: the account's custom monthly sending limit of"
                   f" {limit:,} messages is reached (this message has {n:,} {recipients} and nothing of it was"
                   f" accepted), try again after {resets:%a, %d %b %Y %H:%M:%S} UTC")
        return MonthlyQuotaExceeded(message, retry_after=max(1, int((resets - now).total_seconds())))


class QuotaCheck:
    """The intake AcceptCheck for quotas: the plan and the custom monthly limit come with the domain
    Intake.domain_for returned (from the caller's principal), so the check reads no database. Returns
    what gives the count back. plan_caps: whether plans' caps apply (billing on); a custom monthly limit
    always does."""

    def __init__(self, quota: Quota, *, plan_caps: bool = True):
        self.quota = quota
        self.plan_caps = plan_caps

    def __call__(self, domain: dict, draft) -> Callable[[], None]:
        n = sum(len(copy.recipients) for copy in draft.copies)
        return self.quota.reserve(domain["account_id"], domain.get("plan"), n, domain["name"],
                                  monthly_limit=domain.get("monthly_limit"), plan_caps=self.plan_caps)
