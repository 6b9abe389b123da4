"""The quota's periods: the next UTC midnight and the first of next month, across a year's end."""

from datetime import UTC, datetime

from envoi.billing.plans import load
from envoi.billing.quota import next_day, next_month
from envoi.billing.usage import overage


def test_resets():
    now = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert next_day(now) == datetime(2027, 1, 1, tzinfo=UTC)
    assert next_month(now) == datetime(2027, 1, 1, tzinfo=UTC)
    assert next_month(datetime(2026, 2, 3, tzinfo=UTC)) == datetime(2026, 3, 1, tzinfo=UTC)


def test_overage_is_billed_per_1000_rounded_up_to_the_cent():
    plans = load()
    assert overage(plans.get("basic"), 9000) == (0, 0)
    assert overage(plans.get("basic"), 10_001) == (1, 1)  # 180 cents per 1,000: 0.18 rounds up to 1
    assert overage(plans.get("basic"), 12_000) == (2000, 360)
    assert overage(plans.get("free"), 3500) == (500, 0)  # no overage sold
