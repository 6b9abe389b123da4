"""`envoi billing` as an operator meets it: the plans table, an account's usage against its plan, and
set-plan (audited, refused for an unknown plan or account with one line)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from envoi.cli import main
from tests.support.api import accepted, send_form


@pytest.fixture
def nothing_left_queued(db, domain):
    yield
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'", (domain["id"],))


def test_plans_table(cli_env):
    result = CliRunner().invoke(main, ["billing", "plans"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "free (default)\tFree\t0.00 USD\t3,000\t100\t3,000\t-\t1" in lines
    assert "basic\tBasic\t15.00 USD\t10,000\t-\t-\t1.80 USD\t5" in lines
    assert lines[-1] == "billing is off (ENVOI_BILLING): no plan's caps apply"


def test_usage_and_set_plan(cli_env, client, services, account, domain, api_key, db, nothing_left_queued):
    accepted(send_form(client, api_key, domain, to=["a@dest.test", "b@dest.test"]))
    result = CliRunner().invoke(main, ["billing", "usage", str(account["id"])])
    assert result.exit_code == 0, result.output
    usage = json.loads(result.output)
    assert usage["plan"] == "free" and usage["today"] == {"accepted": 2, "daily_cap": 100}
    assert usage["month"] == {"accepted": 2, "included": 3000, "monthly_cap": 3000}
    assert usage["overage"] == {"messages": 0, "amount": 0, "currency": "usd"}

    assert services.accounts.authenticate_key(api_key).plan == "free"  # in this process's cache now
    result = CliRunner().invoke(main, ["billing", "set-plan", str(account["id"]), "scale"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"id": account["id"], "plan": "scale"}
    assert services.accounts.authenticate_key(api_key).plan == "scale"  # the CLI's change reached it
    row = db.execute("SELECT actor, details FROM audit_log WHERE account_id = %s AND action = 'account.plan'",
                     (account["id"],)).fetchone()
    assert row["actor"].startswith("cli:") and row["details"] == {"from": "free", "to": "scale"}


def test_set_plan_refuses_an_unknown_plan_or_account_and_changes_nothing(cli_env, account, db):
    result = CliRunner().invoke(main, ["billing", "set-plan", str(account["id"]), "platinum"])
    assert result.exit_code == 2 and "no plan 'platinum'" in result.output
    result = CliRunner().invoke(main, ["billing", "set-plan", "999999", "basic"])
    assert result.exit_code == 1 and "Error: Account not found: 999999" in result.output
    assert db.execute("SELECT plan FROM accounts WHERE id = %s", (account["id"],)).fetchone()["plan"] == "free"


def test_a_bad_plans_file_stops_a_process_at_start_with_one_line(cli_env, tmp_path):
    bad = tmp_path / "plans.toml"
    bad.write_text('[plans.free]\ntitle = "Free"\n')  # no included_per_month
    cli_env.setenv("ENVOI_BILLING_PLANS", str(bad))
    for command in (["billing", "plans"], ["accounts", "list"], ["api"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert f"Error: {bad}: plan 'free' needs included_per_month" in result.output
    cli_env.setenv("ENVOI_BILLING_PLANS", str(tmp_path / "missing.toml"))
    result = CliRunner().invoke(main, ["billing", "plans"])
    assert result.exit_code == 1 and "Error: cannot read the plans file" in result.output
