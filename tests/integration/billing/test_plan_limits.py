"""Plans' feature gates with billing on (max_domains, max_users, dedicated_ips from the plans file), through
the real API, dashboard and CLI: one past the plan's limit is refused with 403 and a message naming the
limit and the plan, and nothing changes; a larger plan lifts the limit; billing off limits nothing."""

from __future__ import annotations

import uuid
from urllib.parse import urlencode

import pytest
from click.testing import CliRunner

from envoi import runtime
from envoi.cli import main
from tests.conftest import basic
from tests.support.dashboard import operator_of, signed_in, user_of

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
DOMAIN_LIMIT = ("Plan limit reached: the Free plan allows 1 domain and the account has 1; move the account to a"
                " larger plan (or remove one) first")
USER_LIMIT = ("Plan limit reached: the Free plan allows 1 user and the account has 1; move the account to a"
              " larger plan (or remove one) first")
NO_DEDICATED = "Dedicated IPs are not part of the Free plan: move the account to a plan with dedicated IPs first"


@pytest.fixture(scope="module")
def services(settings):
    """This module's region runs with billing on (the session's runs with it off)."""
    svc = runtime.build(settings.replace(billing=True), pool_size=4)
    yield svc
    svc.close()


@pytest.fixture
def billing_cli(cli_env):
    cli_env.setenv("ENVOI_BILLING", "on")
    return cli_env


def count(db, sql, *args) -> int:
    return db.execute(sql, args).fetchone()["n"]


def domains_of(db, account) -> int:
    return count(db, "SELECT count(*) AS n FROM domains WHERE account_id = %s", account["id"])


def people_of(db, account) -> int:
    return count(db, "SELECT (SELECT count(*) FROM users WHERE account_id = %s) + (SELECT count(*) FROM"
                     " user_invitations WHERE account_id = %s AND accepted_at IS NULL) AS n", account["id"], account["id"])


def new_name() -> str:
    return f"{uuid.uuid4().hex[:8]}.limits.test"


def post_domain(client, key, name):
    return client.simulate_post("/v4/domains", body=urlencode({"name": name, "dkim_key_size": "1024"}),
                                headers={**FORM, **basic(key)})


# domains -----------------------------------------------------------------------------------------------------
def test_the_api_refuses_a_domain_past_the_plan_and_a_larger_plan_lifts_it(client, services, account, db):
    _, key = services.accounts.create_key(account["id"], "admin")
    assert post_domain(client, key, new_name()).status_code == 200  # the free plan's one domain
    refused = new_name()
    resp = post_domain(client, key, refused)
    assert resp.status_code == 403 and resp.json == {"message": DOMAIN_LIMIT}
    assert domains_of(db, account) == 1
    assert count(db, "SELECT count(*) AS n FROM domains WHERE name = %s", refused) == 0

    db.execute("UPDATE accounts SET plan = 'basic' WHERE id = %s", (account["id"],))
    assert post_domain(client, key, refused).status_code == 200
    assert domains_of(db, account) == 2


def test_the_dashboard_refuses_a_domain_past_the_plan(client, services, account, db):
    page = signed_in(client, services, *user_of(services, account, "admin"))
    assert page.post("/dashboard/domains", {"name": new_name(), "dkim_key_size": "1024"}).status_code == 303
    resp = page.post("/dashboard/domains", {"name": new_name(), "dkim_key_size": "1024"})
    assert resp.status_code == 403 and DOMAIN_LIMIT in resp.text
    assert domains_of(db, account) == 1


def test_concurrent_adds_cannot_both_take_the_last_place(services, account, db):
    from concurrent.futures import ThreadPoolExecutor

    def add(_):
        try:
            return services.accounts.add_domain(account["id"], new_name(), dkim_key_size=1024)["name"]
        except Exception as ex:  # noqa: BLE001 - the refusal is what is counted
            return type(ex).__name__

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(add, range(4)))
    assert sorted(r == "PlanLimitReached" for r in results) == [False, True, True, True]
    assert domains_of(db, account) == 1


# users ------------------------------------------------------------------------------------------------------
def test_inviting_past_the_plans_users_is_refused_everywhere(client, services, account, db, billing_cli):
    admin = signed_in(client, services, *user_of(services, account, "admin"))  # the free plan's one user
    assert people_of(db, account) == 1

    with pytest.raises(Exception, match="Plan limit reached") as refused:
        services.users.invite(account["id"], "second@people.test", "developer", actor="test")
    assert refused.value.http_status == 403 and refused.value.message == USER_LIMIT

    resp = admin.post("/dashboard/users", {"email": "second@people.test", "role": "developer"})
    assert resp.status_code == 403 and USER_LIMIT in resp.text

    result = CliRunner().invoke(main, ["users", "invite", "second@people.test", "--account-id", str(account["id"])])
    assert result.exit_code == 1 and USER_LIMIT in result.output
    assert people_of(db, account) == 1

    db.execute("UPDATE accounts SET plan = 'basic' WHERE id = %s", (account["id"],))  # 5 users
    assert admin.post("/dashboard/users", {"email": "second@people.test", "role": "developer"}).status_code == 200
    assert people_of(db, account) == 2


def test_a_pending_invitation_takes_a_place(services, account, db):
    services.users.invite(account["id"], "first@people.test", "admin", actor="test")
    with pytest.raises(Exception, match="Plan limit reached"):
        services.users.invite(account["id"], "second@people.test", "admin", actor="test")
    assert people_of(db, account) == 1


# dedicated IPs ----------------------------------------------------------------------------------------------
@pytest.fixture
def dedicated_ip(services, clean_ips):
    services.ips.add_ip("test", "127.0.0.2", host=services.settings.relay_host, helo="o2.mta.test", dedicated=True)
    return "127.0.0.2"


def owner_of(db, address):
    return db.execute("SELECT account_id FROM ips WHERE address = %s", (address,)).fetchone()["account_id"]


def test_a_dedicated_ip_needs_a_plan_with_dedicated_ips_everywhere(client, services, account, domain, db,
                                                                   dedicated_ip, billing_cli):
    audit_before = count(db, "SELECT count(*) AS n FROM ip_audit")
    _, operator_key = services.accounts.create_key(None, "operator")
    resp = client.simulate_put(f"/v3/ips/{dedicated_ip}", body=urlencode({"account_id": account["id"]}),
                               headers={**FORM, **basic(operator_key)})
    assert resp.status_code == 403 and resp.json == {"message": NO_DEDICATED}
    resp = client.simulate_post(f"/v3/domains/{domain['name']}/ips", body=urlencode({"ip": dedicated_ip}),
                                headers={**FORM, **basic(operator_key)})
    assert resp.status_code == 403 and resp.json == {"message": NO_DEDICATED}

    operator = signed_in(client, services, *operator_of(services))
    resp = operator.post("/dashboard/operator/ips/assign", {"ip": dedicated_ip, "account_id": str(account["id"])})
    assert resp.status_code == 403 and NO_DEDICATED in resp.text
    resp = operator.post("/dashboard/operator/ips/assign-domain", {"ip": dedicated_ip, "domain": domain["name"]})
    assert resp.status_code == 403 and NO_DEDICATED in resp.text

    result = CliRunner().invoke(main, ["ips", "assign", dedicated_ip, str(account["id"])])
    assert result.exit_code == 1 and NO_DEDICATED in result.output
    assert owner_of(db, dedicated_ip) is None
    assert count(db, "SELECT count(*) AS n FROM domain_ips WHERE domain_id = %s", domain["id"]) == 0
    assert count(db, "SELECT count(*) AS n FROM ip_audit") == audit_before

    db.execute("UPDATE accounts SET plan = 'scale' WHERE id = %s", (account["id"],))  # dedicated_ips = true
    result = CliRunner().invoke(main, ["ips", "assign", dedicated_ip, str(account["id"])])
    assert result.exit_code == 0, result.output
    assert owner_of(db, dedicated_ip) == account["id"]


# billing off ------------------------------------------------------------------------------------------------
def test_billing_off_limits_nothing(settings, db, clean_ips):
    region = runtime.build(settings, pool_size=2)  # billing off: self-hosting
    try:
        account = region.accounts.create_account(f"acct-{uuid.uuid4().hex[:6]}")
        for _ in range(3):
            region.accounts.add_domain(account["id"], new_name(), dkim_key_size=1024)
        for n in range(3):
            region.users.invite(account["id"], f"p{n}@people.test", "developer", actor="test")
        region.ips.add_ip("test", "127.0.0.2", host=region.settings.relay_host, helo="o2.mta.test", dedicated=True)
        region.ips.assign_ip("test", "127.0.0.2", account["id"])
        assert domains_of(db, account) == 3 and people_of(db, account) == 3
        assert owner_of(db, "127.0.0.2") == account["id"]
    finally:
        region.close()
