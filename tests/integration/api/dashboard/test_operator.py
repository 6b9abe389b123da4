"""Operator pages: accounts, IPs and pools, warm-up, queues and webhook backlog. Each change made on a
page is the API's change (seen through /v3/ips, /v3/ip_pools and the database); a customer, even an
admin, gets a 404 on every operator page and form and changes nothing."""

from __future__ import annotations

import re
import uuid

import pytest
from psycopg.types.json import Jsonb

from envoi.api.dashboard import security
from envoi.mta import store as mta_store
from tests.conftest import basic
from tests.support.dashboard import operator_of, signed_in
from tests.support.delivery import route, send
from tests.support.dns_server import DnsServer
from tests.support.relay import RelayThread, relay_settings, wait_until

pytestmark = pytest.mark.usefixtures("clean_ips")  # the IP inventory is the region's: start from none

OPERATOR_GETS = ["/dashboard/operator", "/dashboard/operator/ips", "/dashboard/operator/ips/127.0.0.2",
                 "/dashboard/operator/queues"]


@pytest.fixture
def operator(client, services):
    return signed_in(client, services, *operator_of(services))


@pytest.fixture
def operator_key(services):
    _, secret = services.accounts.create_key(None, "operator")
    return basic(secret)


def add_ip(services, address, *, dedicated=True):
    return services.ips.add_ip("test", address, host=services.settings.relay_host,
                               helo=f"o{address.rsplit('.', 1)[1]}.mta.test", dedicated=dedicated)


def new_domain(services, account, label="more"):
    return services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.{label}.test", dkim_key_size=1024,
                                        verified=True)


def error_of(html: str) -> str:
    return re.search(r'class="error" role="alert">([^<]*)<', html).group(1)


def row_of(html: str, attribute: str, value: str) -> str:
    """The <tr> whose data-ATTRIBUTE is VALUE."""
    return re.search(rf'<tr {attribute}="{re.escape(value)}">(.*?)</tr>', html, re.S).group(1)


def cell(row: str, name: str) -> int:
    return int(re.search(rf'data-field="{name}">([\d,]+)<', row).group(1).replace(",", ""))


def card(html: str, name: str) -> int:
    return int(re.search(rf'data-total="{name}">([\d,]+)<', html).group(1).replace(",", ""))


# accounts ---------------------------------------------------------------------------------------
def test_accounts_page_lists_each_account_with_its_region_plan_domains_and_users(operator, services, account,
                                                                                  domain, page_as):
    new_domain(services, account)
    page_as("analyst")
    other = services.accounts.create_account(f"acct-{uuid.uuid4().hex[:6]}", plan="pro")
    resp = operator.get("/dashboard/operator")  # newest first: both are on the first page
    assert resp.status_code == 200
    row = row_of(resp.text, "data-account", str(account["id"]))
    assert account["name"] in row and ">eu<" in row and ">free<" in row
    assert re.findall(r'class="num">(\d+)</td>', row) == [str(account["id"]), "2", "1", "0"]  # id, domains, users, 30d
    other_row = row_of(resp.text, "data-account", str(other["id"]))
    assert ">pro<" in other_row and re.findall(r'class="num">(\d+)</td>', other_row)[1:] == ["0", "0", "0"]
    assert resp.headers["content-security-policy"] == security.PAGE_POLICY


def test_suspend_and_reinstate_from_the_accounts_page(operator, services, account, db):
    resp = operator.get("/dashboard/operator", q=account["name"])
    assert f'/dashboard/operator/accounts/{account["id"]}/suspend' in resp.text
    r = operator.post(f"/dashboard/operator/accounts/{account['id']}/suspend", {"reason": ""})
    assert r.status_code == 400 and "reason" in error_of(r.text)
    assert db.execute("SELECT state FROM accounts WHERE id = %s", (account["id"],)).fetchone()["state"] == "active"
    r = operator.post(f"/dashboard/operator/accounts/{account['id']}/suspend", {"reason": "spam complaints"})
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/operator?done=suspended"
    assert db.execute("SELECT state FROM accounts WHERE id = %s", (account["id"],)).fetchone()["state"] == "suspended"
    assert "spam complaints" in operator.get("/dashboard/operator", q=str(account["id"])).text
    r = operator.post(f"/dashboard/operator/accounts/{account['id']}/reinstate")
    assert r.status_code == 303
    assert db.execute("SELECT state FROM accounts WHERE id = %s", (account["id"],)).fetchone()["state"] == "active"
    assert operator.post("/dashboard/operator/accounts/999999999/reinstate").status_code == 404


def test_restrict_and_lift_from_the_accounts_page(operator, services, account, db):
    resp = operator.get("/dashboard/operator", q=str(account["id"]))
    assert f'/dashboard/operator/accounts/{account["id"]}/restrict' in resp.text
    r = operator.post(f"/dashboard/operator/accounts/{account['id']}/restrict", {"reason": ""})
    assert r.status_code == 400 and "reason" in error_of(r.text)
    r = operator.post(f"/dashboard/operator/accounts/{account['id']}/restrict", {"reason": "ticket 7: Art. 18"})
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/operator?done=restricted"
    assert db.execute("SELECT state FROM accounts WHERE id = %s", (account["id"],)).fetchone()["state"] == "restricted"
    resp = operator.get("/dashboard/operator", q=str(account["id"]))
    assert "ticket 7: Art. 18" in resp.text and f'/dashboard/operator/accounts/{account["id"]}/lift' in resp.text
    r = operator.post(f"/dashboard/operator/accounts/{account['id']}/reinstate")  # not how a restriction ends
    assert r.status_code == 400
    r = operator.post(f"/dashboard/operator/accounts/{account['id']}/lift")
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/operator?done=lifted"
    assert db.execute("SELECT state FROM accounts WHERE id = %s", (account["id"],)).fetchone()["state"] == "active"


def test_the_accounts_page_finds_an_account_by_name_prefix_or_id_among_many(operator, services):
    tag = uuid.uuid4().hex[:6]
    wanted = services.accounts.create_account(f"Acme_{tag} GmbH")
    services.accounts.create_account(f"AcmeX{tag}")  # _ is literal in the search, not LIKE's any-character
    for _ in range(3):
        services.accounts.create_account(f"filler-{uuid.uuid4().hex[:6]}")
    for query in (f"acme_{tag}", str(wanted["id"])):
        html = operator.get("/dashboard/operator", q=query).text
        assert re.findall(r'data-account="(\d+)"', html) == [str(wanted["id"])], query
        assert "1 account matching" in html
    assert re.findall(r'data-account="(\d+)"', operator.get("/dashboard/operator", q="no-such-%").text) == []


# IPs and pools ----------------------------------------------------------------------------------
def test_an_ip_assigned_to_a_domain_on_the_page_is_the_apis_assignment_with_its_audit(
        operator, client, services, account, domain, db, operator_key):
    add_ip(services, "127.0.0.2")
    add_ip(services, "127.0.0.3", dedicated=False)
    page = operator.get("/dashboard/operator/ips")
    assert page.status_code == 200 and 'data-ip="127.0.0.2"' in page.text and 'data-ip="127.0.0.3"' in page.text

    resp = operator.post("/dashboard/operator/ips/assign-domain", {"ip": "127.0.0.2", "domain": domain["name"]})
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/operator/ips?done=domain-added"

    api = client.simulate_get("/v3/ips/127.0.0.2", headers=operator_key).json
    assert api["account_id"] == account["id"] and api["assigned_at"]
    listed = client.simulate_get("/v3/ips", headers=operator_key).json["details"]
    assert [(d["ip"], d["account_id"]) for d in listed] == [("127.0.0.2", account["id"]), ("127.0.0.3", None)]
    assert client.simulate_get(f"/v3/domains/{domain['name']}/ips", headers=operator_key).json["items"] == ["127.0.0.2"]
    assert db.execute("SELECT address FROM domain_ips WHERE domain_id = %s", (domain["id"],)).fetchall() == [
        {"address": "127.0.0.2"}]
    actions = db.execute("SELECT actor, action FROM ip_audit WHERE address = '127.0.0.2' ORDER BY id").fetchall()
    operator_id = services.sessions.resolve(operator.token)["user_id"]
    assert [a["action"] for a in actions] == ["ip.add", "ip.assign", "domain.ip.add"]
    assert {a["actor"] for a in actions[1:]} == {f"operator:{operator_id}"}

    listing = operator.get("/dashboard/operator/ips", done="domain-added").text
    row = row_of(listing, "data-ip", "127.0.0.2")
    assert domain["name"] in row and f"#{account['id']}" in row and "The domain now sends over the IP." in listing

    # Off the domain again, from the IP's page.
    resp = operator.post("/dashboard/operator/ips/127.0.0.2/domains/remove", {"domain": domain["name"]})
    assert resp.status_code == 303
    assert client.simulate_get(f"/v3/domains/{domain['name']}/ips", headers=operator_key).json["items"] == []
    resp = operator.post("/dashboard/operator/ips/127.0.0.2/unassign")
    assert resp.status_code == 303
    assert client.simulate_get("/v3/ips/127.0.0.2", headers=operator_key).json["account_id"] is None


def test_assigning_to_an_account_and_every_refusal_changes_nothing(operator, client, services, account, domain, db,
                                                                   operator_key):
    add_ip(services, "127.0.0.2")
    add_ip(services, "127.0.0.3", dedicated=False)
    other = services.accounts.create_account(f"other-{uuid.uuid4().hex[:6]}")
    before = db.execute("SELECT count(*) AS n FROM ip_audit").fetchone()["n"]
    refusals = [
        ("/dashboard/operator/ips/assign", {"ip": "127.0.0.2", "account_id": "abc"}, 400, "account_id must be a number"),
        ("/dashboard/operator/ips/assign", {"ip": "127.0.0.2", "account_id": ""}, 400, "account_id is required"),
        ("/dashboard/operator/ips/assign", {"ip": "127.0.0.2", "account_id": "999999999"}, 404, "Account not found"),
        ("/dashboard/operator/ips/assign", {"ip": "not-an-ip", "account_id": str(account["id"])}, 400,
         "not a valid IP address"),
        ("/dashboard/operator/ips/assign", {"ip": "127.0.0.3", "account_id": str(account["id"])}, 400,
         "only dedicated IPs can be assigned"),
        ("/dashboard/operator/ips/assign-domain", {"ip": "127.0.0.2", "domain": "nope.example.test"}, 404,
         "Domain not found"),
        ("/dashboard/operator/ips/assign-domain", {"ip": "127.0.0.2", "domain": ""}, 400, "domain is required"),
        ("/dashboard/operator/pools", {"name": "  "}, 400, "name parameter is missing"),
    ]
    for path, fields, status, message in refusals:
        resp = operator.post(path, fields)
        assert resp.status_code == status and message in error_of(resp.text), (path, fields, resp.text[-400:])
        assert 'data-ip="127.0.0.2"' in resp.text  # the page again, with what was typed
    assert db.execute("SELECT count(*) AS n FROM ip_audit").fetchone()["n"] == before
    assert client.simulate_get("/v3/ips/127.0.0.2", headers=operator_key).json["account_id"] is None

    resp = operator.post("/dashboard/operator/ips/assign", {"ip": "127.0.0.2", "account_id": str(account["id"])})
    assert resp.status_code == 303
    assert client.simulate_get("/v3/ips/127.0.0.2", headers=operator_key).json["account_id"] == account["id"]
    # Now it is the account's: another account's domain cannot have it.
    other_domain = new_domain(services, other, "other")
    resp = operator.post("/dashboard/operator/ips/assign-domain", {"ip": "127.0.0.2", "domain": other_domain["name"]})
    assert resp.status_code == 400 and "assigned to another account" in error_of(resp.text)
    assert db.execute("SELECT count(*) AS n FROM domain_ips WHERE domain_id = %s",
                      (other_domain["id"],)).fetchone()["n"] == 0


def test_pools_are_created_and_their_members_change_on_the_page(operator, client, services, account, db,
                                                                operator_key):
    for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        add_ip(services, address)
    resp = operator.post("/dashboard/operator/pools", {"name": "bulk", "description": "newsletters",
                                                       "account_id": str(account["id"]), "ips": ["127.0.0.2", "127.0.0.3"]})
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/operator/ips?done=pool-created"
    pools = client.simulate_get("/v3/ip_pools", headers=operator_key).json["ip_pools"]
    assert len(pools) == 1 and pools[0]["ips"] == ["127.0.0.2", "127.0.0.3"] and pools[0]["account_id"] == account["id"]
    pool_id = pools[0]["pool_id"]

    assert operator.post(f"/dashboard/operator/pools/{pool_id}/add", {"ip": "127.0.0.4"}).status_code == 303
    assert operator.post(f"/dashboard/operator/pools/{pool_id}/remove", {"ip": "127.0.0.2"}).status_code == 303
    members = [r["address"] for r in db.execute("SELECT address FROM ip_pool_members WHERE pool_id = %s"
                                                " ORDER BY address", (pool_id,)).fetchall()]
    assert members == ["127.0.0.3", "127.0.0.4"]
    assert client.simulate_get(f"/v3/ip_pools/{pool_id}", headers=operator_key).json["ips"] == members
    row = row_of(operator.get("/dashboard/operator/ips").text, "data-pool", pool_id)
    assert "bulk" in row and "127.0.0.3" in row and "127.0.0.4" in row and "newsletters" in row

    # A domain of the pool's account sends over it once linked; another account's domain cannot.
    domain = new_domain(services, account, "pooled")
    stranger = new_domain(services, services.accounts.create_account(f"s-{uuid.uuid4().hex[:6]}"), "stranger")
    resp = operator.post(f"/dashboard/operator/pools/{pool_id}/link", {"domain": stranger["name"]})
    assert resp.status_code == 400 and "belongs to another account" in error_of(resp.text)
    assert operator.post(f"/dashboard/operator/pools/{pool_id}/link", {"domain": domain["name"]}).status_code == 303
    assert client.simulate_get(f"/v3/domains/{domain['name']}/ips", headers=operator_key).json["pool_id"] == pool_id
    assert domain["name"] in row_of(operator.get("/dashboard/operator/ips").text, "data-pool", pool_id)
    resp = operator.post(f"/dashboard/operator/pools/{pool_id}/unlink", {"domain": stranger["name"]})
    assert resp.status_code == 400 and "not linked to this pool" in error_of(resp.text)
    assert operator.post(f"/dashboard/operator/pools/{pool_id}/unlink", {"domain": domain["name"]}).status_code == 303
    assert client.simulate_get(f"/v3/domains/{domain['name']}/ips", headers=operator_key).json["pool_id"] is None

    resp = operator.post(f"/dashboard/operator/pools/{pool_id}/remove", {"ip": "127.0.0.2"})
    assert resp.status_code == 404 and "is not in pool" in error_of(resp.text)
    resp = operator.post("/dashboard/operator/pools/nosuchpool/add", {"ip": "127.0.0.2"})
    assert resp.status_code == 404 and "not found" in error_of(resp.text)


def test_the_warm_up_chart_draws_the_plan_against_what_was_sent(operator, services, db):
    add_ip(services, "127.0.0.2")
    resp = operator.post("/dashboard/operator/ips/127.0.0.2/warmup", {"plan": "2x50,3x100"})
    assert resp.status_code == 303
    db.execute("UPDATE ip_warmups SET started_at = now() - interval '2 days 1 hour' WHERE address = '127.0.0.2'")
    db.execute("INSERT INTO ip_warmup_usage (address, day_no, day_cap, reserved, used) VALUES"
               " ('127.0.0.2', 0, 50, 50, 50), ('127.0.0.2', 1, 50, 40, 40), ('127.0.0.2', 2, 100, 7, 7)")
    html = operator.get("/dashboard/operator/ips/127.0.0.2").text
    assert "Stage 2: 7 of 100 sent today." in html
    assert "Planned daily limit 400" in html and "Sent 97" in html  # the chart's legend: sums of the lines
    sent_points = re.findall(r'<polyline points="([^"]*)"', html)[1].split()
    assert len(sent_points) == 3  # days 1 to 3 drawn; the two still to come have no point
    days = re.findall(r'<tr(?: aria-current="date")?><td>(\d+)(?: \(today\))?</td><td class="num">([\d,]+)</td>\s*'
                      r'<td class="num">([\d,]*)</td>', html)
    assert days == [("1", "50", "50"), ("2", "50", "40"), ("3", "100", "7"), ("4", "100", ""), ("5", "100", "")]
    row = row_of(operator.get("/dashboard/operator/ips").text, "data-ip", "127.0.0.2")
    assert "stage 2: 7 of 100 today" in row

    resp = operator.post("/dashboard/operator/ips/127.0.0.2/warmup", {"plan": "2xfifty"})
    assert resp.status_code == 400 and "DAYSxCAP" in error_of(resp.text)
    assert db.execute("SELECT plan FROM ip_warmups WHERE address = '127.0.0.2'").fetchone()["plan"] == [[2, 50], [3, 100]]
    assert operator.post("/dashboard/operator/ips/127.0.0.2/warmup/stop").status_code == 303
    assert db.execute("SELECT 1 FROM ip_warmups WHERE address = '127.0.0.2'").fetchone() is None
    assert operator.get("/dashboard/operator/ips/127.0.0.9").status_code == 404


# queues -----------------------------------------------------------------------------------------
def test_queue_page_counts_what_is_queued_per_destination_and_relay_host(operator, services, account, domain, db):
    dest = f"{uuid.uuid4().hex[:8]}.queue.test"
    before = card(operator.get("/dashboard/operator/queues").text, "queued")
    for n in range(7):
        send(services, account["id"], domain, f"r{n}@{dest}")
    ids = [r["id"] for r in db.execute("SELECT id FROM recipients WHERE rcpt_domain = %s ORDER BY id",
                                       (dest,)).fetchall()]
    assert len(ids) == 7
    db.execute("UPDATE recipients SET next_attempt_at = now() + interval '1 hour' WHERE id = ANY(%s)", (ids[:2],))
    db.execute("UPDATE recipients SET leased_until = now() + interval '2 minutes', lease_owner = 'relay-a.test'"
               " WHERE id = ANY(%s)", (ids[2:5],))
    db.execute("UPDATE recipients SET attempts = 1, lease_owner = 'relay-b.test' WHERE id = %s", (ids[5],))

    html = operator.get("/dashboard/operator/queues").text
    assert card(html, "queued") - before == 7
    row = row_of(html, "data-destination", dest)
    assert (cell(row, "queued"), cell(row, "due"), cell(row, "in-flight"), cell(row, "retrying")) == (7, 5, 3, 1)
    host_a, host_b = row_of(html, "data-relay-host", "relay-a.test"), row_of(html, "data-relay-host", "relay-b.test")
    assert (cell(host_a, "queued"), cell(host_a, "in-flight"), cell(host_a, "to-retry")) == (3, 3, 0)
    assert (cell(host_b, "queued"), cell(host_b, "in-flight"), cell(host_b, "to-retry")) == (1, 0, 1)
    db.execute("DELETE FROM messages WHERE id IN (SELECT message_pk FROM recipients WHERE rcpt_domain = %s)", (dest,))


def test_queue_figures_are_bounded_to_the_head_of_the_queue(services, account, domain, db):
    """The per-destination query reads at most `scan` queued rows (those due soonest), however long the
    queue: the page costs the same with a million queued."""
    dest = f"{uuid.uuid4().hex[:8]}.bounded.test"
    for n in range(4):
        send(services, account["id"], domain, f"r{n}@{dest}")
    db.execute("UPDATE recipients SET next_attempt_at = now() - interval '10 days' WHERE rcpt_domain = %s", (dest,))
    with services.db.transaction() as conn:
        head = mta_store.queue_by_destination(conn, limit=5, scan=3)
        assert sum(r["queued"] for r in head) == 3 and head[0]["destination"] == dest
        plan = "\n".join(r["QUERY PLAN"] for r in conn.execute(
            "EXPLAIN SELECT rcpt_domain FROM recipients WHERE status = 'queued' ORDER BY next_attempt_at LIMIT 3"))
    assert "recipients_due" in plan  # the head is a range of the due index, not a scan of the table
    db.execute("DELETE FROM messages WHERE id IN (SELECT message_pk FROM recipients WHERE rcpt_domain = %s)", (dest,))


def test_webhook_backlog_counts_due_deliveries_per_account(operator, services, account, domain, db):
    other = services.accounts.create_account(f"hooks-{uuid.uuid4().hex[:6]}")
    before = card(operator.get("/dashboard/operator/queues").text, "webhooks-due")

    def deliveries(account_id, n, **columns):
        extra = "".join(f", {k} = {v}" for k, v in columns.items())
        ids = [r["id"] for r in db.execute(
            "INSERT INTO webhook_deliveries (account_id, domain_id, event_type, url, endpoint, event_id, payload,"
            " next_attempt_at, created_at) SELECT %s, %s, 'delivered', 'http://hook.test/x', 'http://hook.test',"
            " 'e' || g, '{}', now() - interval '5 minutes', now() - interval '1 hour'"
            " FROM generate_series(1, %s) g RETURNING id", (account_id, domain["id"], n)).fetchall()]
        if extra:
            db.execute(f"UPDATE webhook_deliveries SET {extra[2:]} WHERE id = ANY(%s)", (ids,))

    deliveries(account["id"], 5)
    deliveries(account["id"], 2, leased_until="now() + interval '5 minutes'")
    deliveries(account["id"], 3, next_attempt_at="now() + interval '1 hour'")  # not due yet
    deliveries(other["id"], 1)
    html = operator.get("/dashboard/operator/queues").text
    assert card(html, "webhooks-due") - before == 6
    mine, theirs = row_of(html, "data-account", str(account["id"])), row_of(html, "data-account", str(other["id"]))
    assert (cell(mine, "due"), cell(mine, "in-flight")) == (5, 2) and account["name"] in mine
    assert (cell(theirs, "due"), cell(theirs, "in-flight")) == (1, 0)
    assert "1 h old" in mine
    assert services.webhooks.backlog() - before == 6  # the gauge's figure agrees
    db.execute("DELETE FROM webhook_deliveries WHERE account_id = ANY(%s)", ([account["id"], other["id"]],))


def test_failing_webhook_endpoints_are_listed_with_their_backlog(operator, account, domain, db):
    endpoint = f"https://down{domain['id']}.example"
    db.execute("INSERT INTO webhook_endpoint_health (account_id, endpoint, failing_since, failures, last_error)"
               " VALUES (%s, %s, now() - interval '3 hours', 7, 'timeout after 10 s')", (account["id"], endpoint))
    db.execute("INSERT INTO webhook_deliveries (account_id, domain_id, event_type, url, endpoint, event_id, payload)"
               " SELECT %s, %s, 'delivered', %s || '/x', %s, 'e' || g, '{}' FROM generate_series(1, 3) g",
               (account["id"], domain["id"], endpoint, endpoint))
    try:
        html = operator.get("/dashboard/operator/queues").text
        row = re.search(rf'<tr data-endpoint="{re.escape(endpoint)}" data-failing-account="{account["id"]}">(.*?)</tr>',
                        html, re.S).group(1)
        assert cell(row, "backlog") == 3 and "3 h" in row and "timeout after 10 s" in row
    finally:
        db.execute("DELETE FROM webhook_deliveries WHERE endpoint = %s", (endpoint,))
        db.execute("DELETE FROM webhook_endpoint_health WHERE endpoint = %s", (endpoint,))


# who may see them -------------------------------------------------------------------------------
def test_a_customer_admin_gets_a_404_on_every_operator_page_and_form_and_nothing_changes(
        page_as, services, account, domain, db):
    add_ip(services, "127.0.0.2")
    pool = services.ips.create_pool("test", "p", ips=["127.0.0.2"])
    admin = page_as("admin")
    for path in OPERATOR_GETS:
        resp = admin.get(path)
        assert resp.status_code == 404 and "127.0.0.2" not in resp.text, path
    before = db.execute("SELECT count(*) AS n FROM ip_audit").fetchone()["n"]
    posts = [
        (f"/dashboard/operator/accounts/{account['id']}/suspend", {"reason": "x"}),
        (f"/dashboard/operator/accounts/{account['id']}/reinstate", {}),
        (f"/dashboard/operator/accounts/{account['id']}/restrict", {"reason": "x"}),
        (f"/dashboard/operator/accounts/{account['id']}/lift", {}),
        ("/dashboard/operator/ips/assign", {"ip": "127.0.0.2", "account_id": str(account["id"])}),
        ("/dashboard/operator/ips/assign-domain", {"ip": "127.0.0.2", "domain": domain["name"]}),
        ("/dashboard/operator/pools", {"name": "mine", "ips": "127.0.0.2"}),
        (f"/dashboard/operator/pools/{pool['id']}/remove", {"ip": "127.0.0.2"}),
        (f"/dashboard/operator/pools/{pool['id']}/link", {"domain": domain["name"]}),
        (f"/dashboard/operator/pools/{pool['id']}/unlink", {"domain": domain["name"]}),
        ("/dashboard/operator/ips/127.0.0.2/unassign", {}),
        ("/dashboard/operator/ips/127.0.0.2/domains/remove", {"domain": domain["name"]}),
        ("/dashboard/operator/ips/127.0.0.2/warmup", {"plan": "1x10"}),
        ("/dashboard/operator/ips/127.0.0.2/warmup/stop", {}),
    ]
    for path, fields in posts:
        assert admin.post(path, fields).status_code == 404, path
    assert db.execute("SELECT count(*) AS n FROM ip_audit").fetchone()["n"] == before
    assert services.ips.get_ip("127.0.0.2")["account_id"] is None
    assert db.execute("SELECT count(*) AS n FROM ip_pools").fetchone()["n"] == 1
    assert db.execute("SELECT 1 FROM domain_ip_pools").fetchone() is None
    assert db.execute("SELECT 1 FROM ip_warmups").fetchone() is None
    assert services.accounts.get_account(account["id"]).get("state", "active") == "active"


def test_an_operator_gets_a_404_on_customer_pages_and_sees_the_operator_menu(operator):
    assert operator.get("/dashboard/overview").status_code == 404
    html = operator.get("/dashboard/operator/queues").text
    assert 'href="/dashboard/operator/ips"' in html and 'href="/dashboard/overview"' not in html


def test_operator_pages_carry_the_strict_policy_and_no_inline_script_or_style(operator, services, account, domain):
    add_ip(services, "127.0.0.2")
    services.ips.add_domain_ip("test", domain, "127.0.0.2")
    services.ips.start_warmup("test", "127.0.0.2", "2x10")
    for path in OPERATOR_GETS:
        resp = operator.get(path)
        assert resp.status_code == 200, path
        assert resp.headers["content-security-policy"] == security.PAGE_POLICY
        assert not re.search(r"<script(?![^>]*\bsrc=)", resp.text), "inline script in " + path
        assert " style=" not in resp.text and not re.search(r"<[^>]+\son[a-z]+=", resp.text), path


# an IP seen in use ------------------------------------------------------------------------------
def test_mail_of_a_domain_assigned_on_the_page_leaves_from_that_ip_and_the_ip_page_shows_it(
        operator, services, settings, account, domain, db, sink):
    add_ip(services, "127.0.0.2")
    add_ip(services, "127.0.0.3", dedicated=False)  # the shared pool, for everyone else
    assert operator.post("/dashboard/operator/ips/assign-domain",
                         {"ip": "127.0.0.2", "domain": domain["name"]}).status_code == 303
    html = operator.get("/dashboard/operator/ips/127.0.0.2").text
    assert "No delivery from this IP" in html

    with DnsServer() as dns:
        rcpt_domain = f"{uuid.uuid4().hex[:8]}.dest.test"
        route(dns, rcpt_domain)
        from envoi import runtime

        egress = runtime.start_egress(services, refresh=0.2)
        try:
            with RelayThread(services, relay_settings(settings, sink, dns), egress=egress):
                message_id = send(services, account["id"], domain, f"someone@{rcpt_domain}")
                received = sink.wait_for(1, timeout=20)
        finally:
            egress.view.stop()
    assert received[0]["peer"] == "127.0.0.2"  # the sink saw the connection come from the assigned IP
    event = wait_until(lambda: db.execute(
        "SELECT data FROM events WHERE event = 'delivered' AND message_id = %s", (message_id,)).fetchone())
    assert event["data"]["envelope"]["sending-ip"] == "127.0.0.2"

    html = operator.get("/dashboard/operator/ips/127.0.0.2").text
    recent = re.search(r'<section id="recent-use">(.*?)</section>', html, re.S).group(1)
    assert f"someone@{rcpt_domain}" in recent and message_id in recent and 'data-field="last-used"' in recent


def test_recent_use_reads_only_the_latest_delivered_events_of_the_ips_domains(services, account, domain, db):
    add_ip(services, "127.0.0.2")
    services.ips.add_domain_ip("test", domain, "127.0.0.2")
    elsewhere = new_domain(services, account, "elsewhere")  # not on this IP: never read

    def delivered(row, ip, minutes_ago, recipient):
        db.execute("INSERT INTO events (event_id, account_id, domain_id, event, recipient, message_id, ts, data)"
                   " VALUES (%s, %s, %s, 'delivered', %s, %s, now() - make_interval(mins => %s), %s)",
                   (uuid.uuid4().hex, account["id"], row["id"], recipient, f"{recipient}.id", minutes_ago,
                    Jsonb({"envelope": {"sending-ip": ip}})))

    delivered(domain, "127.0.0.2", 30, "older@x.test")
    delivered(domain, "127.0.0.9", 10, "newer@x.test")  # after a reassignment, from another IP
    delivered(elsewhere, "127.0.0.2", 5, "stranger@x.test")
    delivered(domain, "127.0.0.2", 60 * 30, "yesterday@x.test")
    use = services.ips.recent_use("127.0.0.2")
    assert [d["recipient"] for d in use["deliveries"]] == ["older@x.test"] and use["last_used_at"] is not None
    # Bounded: only the last `scan` delivered events of each domain are looked at.
    assert services.ips.recent_use("127.0.0.2", scan=1)["deliveries"] == []
    assert services.ips.recent_use("127.0.0.2", hours=0.1)["deliveries"] == []
