"""`envoi billing sync-plans|reconcile` against a real localstripe, as an operator runs them."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from envoi.billing.stripe_gateway import stripe_plan_id
from tests.support.api import accepted, send_form
from tests.support.localstripe import TEST_INCLUDED, card_payment_method


@pytest.fixture
def stripe_cli_env(cli_env, localstripe):
    """The CLI's environment with Stripe's settings pointing at localstripe."""
    cli_env.setenv("ENVOI_STRIPE_SECRET_KEY", localstripe.secret_key)
    cli_env.setenv("ENVOI_STRIPE_API_BASE", localstripe.api_base)
    return cli_env


def _invoke(*args):
    from envoi.cli import main

    return CliRunner().invoke(main, list(args))


def test_sync_plans_twice_creates_nothing_the_second_time(stripe_cli_env, billing):
    result = _invoke("billing", "sync-plans")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"basic\t{stripe_plan_id('basic')}\texists" in lines and len(lines) == len(billing.plans.plans)


def test_without_a_stripe_key_the_error_is_one_line(stripe_cli_env):
    stripe_cli_env.delenv("ENVOI_STRIPE_SECRET_KEY")
    result = _invoke("billing", "sync-plans")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "Error: Stripe is not configured: set ENVOI_STRIPE_SECRET_KEY" in result.output


def test_reconcile_shows_both_sides_and_fails_when_stripe_holds_more(stripe_cli_env, billing, account, domain, api_key,
                                                                    client, db):
    row = billing.start_subscription(account["id"], "basic", card_payment_method(billing))
    for _ in range(TEST_INCLUDED + 2):
        accepted(send_form(client, api_key, domain))
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'", (domain["id"],))
    billing.push_overage(account["id"])

    result = _invoke("billing", "reconcile", str(account["id"]))
    assert result.exit_code == 0, result.output
    header, line = result.output.splitlines()
    fields = dict(zip(header.split("\t"), line.split("\t"), strict=True))
    assert (fields["envoi_pushed"], fields["envoi_unconfirmed"], fields["stripe_units"]) == ("2", "0", "2")

    # an overage item Envoi did not push (billed twice, by hand or by a bug) makes the sides differ
    start = int(row["billing_period_start"].timestamp())
    billing.gateway._client.v1.invoice_items.create({
        "customer": row["stripe_customer_id"], "amount": 1, "currency": "usd",
        "metadata": {"envoi_kind": "overage", "envoi_period_start": str(start), "envoi_units": "2"}})
    result = _invoke("billing", "reconcile", str(account["id"]))
    assert result.exit_code == 1
    assert result.output.splitlines()[1].split("\t")[6] == "4"


def test_reconcile_counts_overage_already_on_the_periods_invoices(stripe_cli_env, billing, account, domain, api_key,
                                                                  client, db):
    """Once Stripe's invoice takes the pending overage items (draft, then finalised and paid) they are no
    longer pending: reconcile finds them on the invoice, so the two sides still agree. (Voided invoices are
    left out, since they bill nothing; localstripe cannot void an invoice that has no payment attempt, so
    that case is not exercised here.)"""
    row = billing.start_subscription(account["id"], "basic", card_payment_method(billing))
    for _ in range(TEST_INCLUDED + 2):
        accepted(send_form(client, api_key, domain))
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'", (domain["id"],))
    assert billing.push_overage(account["id"]) == 2

    invoice = billing.gateway.create_invoice(row["stripe_customer_id"], row["stripe_subscription_id"])
    assert billing.gateway.pending_invoice_items(row["stripe_customer_id"]) == []  # the invoice took them
    assert billing.gateway.pay_invoice(invoice["id"])["status"] == "paid"
    result = _invoke("billing", "reconcile", str(account["id"]))
    assert result.exit_code == 0, result.output
    header, line = result.output.splitlines()
    fields = dict(zip(header.split("\t"), line.split("\t"), strict=True))
    assert (fields["envoi_pushed"], fields["stripe_units"], fields["stripe_amount"], fields["stripe_pending"],
            fields["stripe_invoiced"]) == ("2", "2", "1", "0", "2")

    # more overage after the invoice: pending again, both sides still agree
    for _ in range(3):
        accepted(send_form(client, api_key, domain))
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'", (domain["id"],))
    assert billing.push_overage(account["id"]) == 3
    report = billing.reconcile(account["id"])
    assert (report["envoi_pushed_units"], report["stripe_pending_units"], report["stripe_invoiced_units"]) == (5, 3, 2)
    assert _invoke("billing", "reconcile", str(account["id"])).exit_code == 0
