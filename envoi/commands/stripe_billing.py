"""`envoi billing sync-plans|subscribe|change-plan|reconcile|sweep`: billing with Stripe (operator).

The quota work's `envoi billing plans|usage|set-plan` join the same group (one `billing` noun)."""

from __future__ import annotations

import json

import click

from envoi.commands.billing import billing  # one `billing` group: these commands join plans|usage|set-plan
from envoi.commands.region import with_services


@billing.command("sync-plans")
@with_services
def sync_plans(services) -> None:
    """Create the Stripe Product and Plan of each plan in the plans file that lacks them (idempotent)."""
    for name, stripe_id, created in services.billing.sync_plans():
        click.echo(f"{name}\t{stripe_id}\t{'created' if created else 'exists'}")


@billing.command("subscribe")
@click.argument("account_id", type=int)
@click.argument("plan")
@click.option("--payment-method", default=None, help="A Stripe PaymentMethod id (pm_...), made by Stripe.js.")
@with_services
def subscribe(services, account_id: int, plan: str, payment_method: str | None) -> None:
    """Subscribe ACCOUNT_ID to the paid PLAN (creating its Stripe customer)."""
    row = services.billing.start_subscription(account_id, plan, payment_method)
    click.echo(f"account {account_id}: {row['plan']} ({row['billing_status']}), subscription"
               f" {row['stripe_subscription_id']}")


@billing.command("change-plan")
@click.argument("account_id", type=int)
@click.argument("plan")
@with_services
def change_plan(services, account_id: int, plan: str) -> None:
    """Upgrade ACCOUNT_ID to PLAN at once, or downgrade it at the end of the period."""
    row = services.billing.change_plan(account_id, plan)
    pending = f", {row['pending_plan']} from {row['billing_period_end']:%Y-%m-%d}" if row["pending_plan"] else ""
    click.echo(f"account {account_id}: {row['plan']}{pending}")


@billing.command("reconcile")
@click.argument("account_id", type=int, required=False)
@with_services
def reconcile(services, account_id: int | None) -> None:
    """Envoi's count of this period's overage beside Stripe's invoice items (pending, and already on the
    period's invoices), for ACCOUNT_ID or every subscribed account. Exits 1 when they differ."""
    ids = [account_id] if account_id is not None else services.billing.billed_accounts()
    click.echo("account\tplan\taccepted\toverage\tenvoi_pushed\tenvoi_unconfirmed\tstripe_units\tstripe_amount"
               "\tstripe_pending\tstripe_invoiced")
    differ = False
    for aid in ids:
        r = services.billing.reconcile(aid)
        differ |= r["envoi_pushed_units"] + r["envoi_unconfirmed_units"] != r["stripe_units"]
        click.echo("\t".join(str(r[k]) for k in ("account", "plan", "accepted", "overage_units", "envoi_pushed_units",
                                                   "envoi_unconfirmed_units", "stripe_units", "stripe_amount",
                                                   "stripe_pending_units", "stripe_invoiced_units")))
    if differ:
        raise SystemExit(1)


@billing.command("sweep")
@with_services
def sweep(services) -> None:
    """Run the billing sweeps now: dunning, due downgrades, overage pushes (the scheduler runs them)."""
    suspended, reinstated = services.billing.sweep_dunning()
    click.echo(json.dumps({"suspended": suspended, "reinstated": reinstated,
                           "downgraded": services.billing.apply_due_downgrades(),
                           "overage_units_pushed": services.billing.push_all_overage()}))


COMMANDS: list = []  # registered through envoi.commands.billing's group
