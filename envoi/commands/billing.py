"""`envoi billing …`: the plans, an account's usage against its plan, and moving an account to a plan
(operator). Usage is read from Postgres (the stats rollups), the billing truth."""

from __future__ import annotations

import json

import click

from envoi.billing.usage import overage
from envoi.commands import region
from envoi.commands.region import actor


def _cap(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _money(cents: int | None, currency: str) -> str:
    return "-" if cents is None else f"{cents / 100:.2f} {currency.upper()}"


@click.group("billing", short_help="Plans, usage against them, an account's plan (operator).")
def billing() -> None:
    """Plans (ENVOI_BILLING_PLANS), an account's usage against its plan, and its plan."""


@billing.command("plans")
def billing_plans() -> None:
    """The plans of this region's plans file: price, included volume, caps, overage, log retention."""
    services = region.services(pool_size=1)
    plans = services.plans
    click.echo("plan\ttitle\tprice/month\tincluded/month\tdaily cap\tmonthly cap\toverage/1,000\tlog days")
    for plan in plans:
        default = " (default)" if plan.name == plans.default else ""
        click.echo(f"{plan.name}{default}\t{plan.title}\t{_money(plan.price_per_month, plans.currency)}\t"
                   f"{plan.included_per_month:,}\t{_cap(plan.daily_cap)}\t{_cap(plan.monthly_cap)}\t"
                   f"{_money(plan.overage_per_1000, plans.currency)}\t{plan.log_retention_days}")
    if not services.settings.billing:
        click.echo("billing is off (ENVOI_BILLING): no plan's caps apply")


@billing.command("usage")
@click.argument("account_id", type=int)
def billing_usage(account_id: int) -> None:
    """ACCOUNT_ID's recipients accepted today (UTC) and this calendar month against its plan's caps and
    included volume, and the overage so far (JSON)."""
    services = region.services(pool_size=1)
    account = services.accounts.get_account(account_id)
    plan = services.plans.get(account["plan"])
    today, month = services.usage.day(account_id), services.usage.month(account_id)
    beyond, cost = overage(plan, month)
    click.echo(json.dumps({
        "account_id": account_id, "plan": plan.name, "billing": services.settings.billing,
        "today": {"accepted": today, "daily_cap": plan.daily_cap},
        "month": {"accepted": month, "included": plan.included_per_month, "monthly_cap": plan.monthly_cap},
        "overage": {"messages": beyond, "amount": cost, "currency": services.plans.currency},
    }, indent=2))


@billing.command("set-plan")
@click.argument("account_id", type=int)
@click.argument("plan")
def billing_set_plan(account_id: int, plan: str) -> None:
    """Move ACCOUNT_ID to PLAN (a plan of the plans file): audited, in force at once in every process."""
    services = region.services(pool_size=1)
    if plan not in services.plans.plans:
        raise click.BadParameter(f"no plan {plan!r}; the plans are: {', '.join(services.plans.plans)}",
                                 param_hint="PLAN")
    row = services.accounts.set_plan(account_id, plan, actor=actor())
    click.echo(json.dumps({"id": row["id"], "plan": row["plan"]}))


COMMANDS = [billing]
