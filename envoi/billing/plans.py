"""Plans from a TOML file (envoi/billing/plans.toml by default, ENVOI_BILLING_PLANS to replace it): what
an account may send per day and per month, what overage costs, how long its logs are kept and which
features it has. docs/billing.md documents every field."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from envoi.billing.errors import PlansInvalid

FIELDS = {"title", "price_per_month", "included_per_month", "daily_cap", "overage_per_1000",
          "log_retention_days", "max_domains", "max_users", "dedicated_ips"}


@dataclass(frozen=True)
class Plan:
    name: str
    title: str
    price_per_month: int             # smallest currency unit (cents)
    included_per_month: int          # messages a month; a hard cap when there is no overage price
    daily_cap: int | None            # messages a UTC day; None: no daily cap
    overage_per_1000: int | None     # cents per 1,000 beyond the included volume; None: no overage
    log_retention_days: int
    max_domains: int | None
    max_users: int | None
    dedicated_ips: bool

    @property
    def monthly_cap(self) -> int | None:
        """The monthly hard cap: the included volume when overage is not sold, else none."""
        return None if self.overage_per_1000 is not None else self.included_per_month

    @property
    def paid(self) -> bool:
        return self.price_per_month > 0


@dataclass(frozen=True)
class Plans:
    plans: Mapping[str, Plan]
    default: str
    currency: str

    def get(self, name: str | None) -> Plan:
        """The named plan; an account on a plan no longer offered is held to the default plan's terms."""
        return self.plans.get(name or "", self.plans[self.default])

    def __iter__(self):
        return iter(self.plans.values())


def load(path: str | Path | None = None) -> Plans:
    """The plans of PATH, or the packaged default file. PlansInvalid names what is wrong."""
    if path is None:
        text = (resources.files("envoi.billing") / "plans.toml").read_text()
        where = "envoi/billing/plans.toml"
    else:
        try:
            text = Path(path).read_text()
        except OSError as ex:
            raise PlansInvalid(f"cannot read the plans file {path}: {ex.strerror}") from ex
        where = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as ex:
        raise PlansInvalid(f"{where}: {ex}") from ex
    return parse(data, where)


def parse(data: Mapping, where: str = "plans") -> Plans:
    tables = data.get("plans")
    if not isinstance(tables, Mapping) or not tables:
        raise PlansInvalid(f"{where}: no [plans.<name>] tables")
    plans = {name: _plan(name, table, where) for name, table in tables.items()}
    default = data.get("default", "free")
    if default not in plans:
        raise PlansInvalid(f"{where}: the default plan {default!r} is not defined")
    currency = str(data.get("currency", "usd")).lower()
    return Plans(plans, default, currency)


def _plan(name: str, table: Mapping, where: str) -> Plan:
    unknown = set(table) - FIELDS
    if unknown:
        raise PlansInvalid(f"{where}: plan {name!r} has unknown fields: {', '.join(sorted(unknown))}")

    def count(field: str, *, required: bool = False) -> int | None:
        value = table.get(field)
        if value is None:
            if required:
                raise PlansInvalid(f"{where}: plan {name!r} needs {field}")
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PlansInvalid(f"{where}: plan {name!r}: {field} must be a whole number, 0 or more")
        return value

    overage = count("overage_per_1000")
    return Plan(
        name=name, title=str(table.get("title", name)), price_per_month=count("price_per_month") or 0,
        included_per_month=count("included_per_month", required=True),
        daily_cap=count("daily_cap") or None, overage_per_1000=overage,
        log_retention_days=count("log_retention_days") or 30,
        max_domains=count("max_domains") or None, max_users=count("max_users") or None,
        dedicated_ips=bool(table.get("dedicated_ips", False)),
    )
