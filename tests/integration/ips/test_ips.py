"""IPs: admin API and CLI, customer read-only view, audit, export, accept-time 403, egress selection."""

from __future__ import annotations

import base64
import csv
import io
import uuid
from urllib.parse import urlencode

import pytest
from click.testing import CliRunner

from envoi import runtime
from envoi.ips.egress import NoEgressAvailable
from tests.conftest import basic
from tests.support.api import send_form

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
TEST_IPS = [f"127.0.0.{n}" for n in range(2, 10)]
pytestmark = pytest.mark.usefixtures("clean_ips")  # every test here manages the IP inventory


@pytest.fixture
def operator(services):
    key, secret = services.accounts.create_key(None, "operator")
    return {"secret": secret, "id": key["id"], "headers": {**basic(secret), **FORM}}


def post(client, path, headers, **fields):
    return client.simulate_post(path, headers={**headers, **FORM}, body=urlencode(fields, doseq=True))


def add_ip(services, address, *, dedicated=False, host=None, helo=None):
    return services.ips.add_ip("test", address, host=host or services.settings.relay_host,
                               helo=helo or f"o{address.split('.')[-1]}.mta.test", dedicated=dedicated)


def other_customer(services):
    account = services.accounts.create_account(f"other-{uuid.uuid4().hex[:6]}")
    domain = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.other.test", dkim_key_size=1024, verified=True)
    _, secret = services.accounts.create_key(account["id"], "admin")
    return account, domain, secret


# admin API -------------------------------------------------------------------------------------
def test_operator_manages_inventory_and_assignment_with_audit(client, services, db, operator, account, domain,
                                                              api_key):
    r = post(client, "/v3/ips", operator["headers"], ip="127.0.0.2", helo="o2.mta.test", dedicated="true",
             host=services.settings.relay_host)
    assert r.status_code == 200, r.text
    post(client, "/v3/ips", operator["headers"], ip="127.0.0.3", helo="o3.mta.test")
    r = client.simulate_get("/v3/ips", headers=basic(operator["secret"]))
    assert r.json["items"] == ["127.0.0.2", "127.0.0.3"] and r.json["total_count"] == 2
    assert client.simulate_get("/v3/ips?dedicated=true", headers=basic(operator["secret"])).json["items"] == [
        "127.0.0.2"]
    r = client.simulate_get("/v3/ips/127.0.0.2", headers=basic(operator["secret"]))
    assert r.json["ip"] == "127.0.0.2" and r.json["dedicated"] is True and r.json["rdns"] == "o2.mta.test"

    r = post(client, f"/v3/domains/{domain['name']}/ips", operator["headers"], ip="127.0.0.2")
    assert r.status_code == 200 and r.json == {"message": "success"}
    row = db.execute("SELECT account_id, assigned_at FROM ips WHERE address = '127.0.0.2'").fetchone()
    assert row["account_id"] == account["id"] and row["assigned_at"] is not None
    r = client.simulate_get(f"/v3/domains/{domain['name']}/ips", headers=basic(operator["secret"]))
    assert r.json["items"] == ["127.0.0.2"]

    actions = db.execute("SELECT actor, action, address, account_id, domain FROM ip_audit ORDER BY id").fetchall()
    assert [a["action"] for a in actions] == ["ip.add", "ip.add", "ip.assign", "domain.ip.add"]
    assert all(a["actor"] == f"key:{operator['id']}" for a in actions)
    assert actions[-1] == {"actor": f"key:{operator['id']}", "action": "domain.ip.add", "address": "127.0.0.2",
                           "account_id": account["id"], "domain": domain["name"]}

    r = client.simulate_delete(f"/v3/domains/{domain['name']}/ips/127.0.0.2", headers=basic(operator["secret"]))
    assert r.status_code == 200
    assert db.execute("SELECT count(*) AS n FROM domain_ips").fetchone()["n"] == 0
    assert db.execute("SELECT action FROM ip_audit ORDER BY id DESC LIMIT 1").fetchone()["action"] == \
        "domain.ip.remove"
    r = client.simulate_get("/v3/ips/audit", headers=basic(operator["secret"]))
    assert r.json["total_count"] == 5 and r.json["items"][0]["action"] == "domain.ip.remove"


def test_customer_sees_only_its_own_ips_and_cannot_change_anything(client, services, db, account, domain,
                                                                  api_key, operator):
    add_ip(services, "127.0.0.2", dedicated=True)
    add_ip(services, "127.0.0.3", dedicated=True)
    add_ip(services, "127.0.0.4")
    services.ips.add_domain_ip("test", domain, "127.0.0.2")
    _, other_domain, other_key = other_customer(services)
    services.ips.add_domain_ip("test", other_domain, "127.0.0.3")

    r = client.simulate_get("/v3/ips", headers=basic(api_key))
    assert r.status_code == 200 and r.json["items"] == ["127.0.0.2"]
    assert "host" not in r.json["details"][0]  # operator-only fields stay hidden
    assert client.simulate_get("/v3/ips", headers=basic(other_key)).json["items"] == ["127.0.0.3"]
    assert client.simulate_get("/v3/ips/127.0.0.2", headers=basic(api_key)).status_code == 200
    r = client.simulate_get("/v3/ips/127.0.0.3", headers=basic(api_key))
    assert r.status_code == 404 and "message" in r.json
    assert client.simulate_get(f"/v3/domains/{domain['name']}/ips", headers=basic(api_key)).json["items"] == [
        "127.0.0.2"]
    assert client.simulate_get(f"/v3/domains/{other_domain['name']}/ips",
                               headers=basic(api_key)).status_code == 404

    before = db.execute("SELECT count(*) AS n FROM ip_audit").fetchone()["n"]
    for method, path, fields in [
        ("POST", "/v3/ips", {"ip": "127.0.0.9", "helo": "x.test"}),
        ("POST", f"/v3/domains/{domain['name']}/ips", {"ip": "127.0.0.4"}),
        ("DELETE", f"/v3/domains/{domain['name']}/ips/127.0.0.2", {}),
        ("PUT", "/v3/ips/127.0.0.2", {"enabled": "false"}),
        ("POST", "/v3/ip_pools", {"name": "mine"}),
        ("POST", "/v3/ip_warmups/127.0.0.2", {}),
        ("GET", "/v3/ips/export", {}),
        ("GET", "/v3/ips/audit", {}),
    ]:
        r = client.simulate_request(method, path, headers={**basic(api_key), **FORM}, body=urlencode(fields))
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.json == {"message": "Forbidden"}
    assert db.execute("SELECT count(*) AS n FROM ip_audit").fetchone()["n"] == before
    assert db.execute("SELECT count(*) AS n FROM ips").fetchone()["n"] == 3
    assert db.execute("SELECT enabled FROM ips WHERE address = '127.0.0.2'").fetchone()["enabled"] is True
    # Sending keys and no key at all get nothing either.
    assert client.simulate_get("/v3/ips").status_code == 401


def test_bad_input_is_refused_and_changes_nothing(client, services, db, operator, account, domain):
    add_ip(services, "127.0.0.2", dedicated=True)
    add_ip(services, "127.0.0.3")
    _, other_domain, _ = other_customer(services)
    services.ips.add_domain_ip("test", other_domain, "127.0.0.2")
    before = db.execute("SELECT count(*) AS n FROM ip_audit").fetchone()["n"]
    cases = [
        (post(client, "/v3/ips", operator["headers"], ip="not-an-ip", helo="x.test"), 400),
        (post(client, "/v3/ips", operator["headers"], ip="127.0.0.3", helo="x.test"), 400),  # exists
        (post(client, f"/v3/domains/{domain['name']}/ips", operator["headers"], ip="127.0.0.2"), 400),  # foreign
        (post(client, f"/v3/domains/{domain['name']}/ips", operator["headers"], ip="127.0.0.3"), 400),  # shared
        (post(client, f"/v3/domains/{domain['name']}/ips", operator["headers"], ip="127.0.0.8"), 404),
        (post(client, "/v3/domains/nope.example.test/ips", operator["headers"], ip="127.0.0.3"), 404),
        (post(client, "/v3/ip_pools", operator["headers"], name="p", ips="127.0.0.3"), 400),  # shared IP
        (post(client, "/v3/ip_warmups/127.0.0.3", operator["headers"], plan="3xfoo"), 400),
    ]
    for response, status in cases:
        assert response.status_code == status, (response.status_code, response.text)
        assert isinstance(response.json["message"], str)
    assert db.execute("SELECT count(*) AS n FROM ip_audit").fetchone()["n"] == before
    assert db.execute("SELECT count(*) AS n FROM ip_pools").fetchone()["n"] == 0
    assert db.execute("SELECT count(*) AS n FROM ip_warmups").fetchone()["n"] == 0
    assert db.execute("SELECT count(*) AS n FROM domain_ips WHERE domain_id = %s",
                      (domain["id"],)).fetchone()["n"] == 0


def test_pools_create_link_patch_and_delete_with_replacement(client, services, db, operator, account, domain,
                                                             api_key):
    for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        add_ip(services, ip, dedicated=True)
    r = post(client, "/v3/ip_pools", operator["headers"], name="bulk", description="marketing",
             ips=["127.0.0.2", "127.0.0.3"])
    assert r.status_code == 200, r.text
    pool_id = r.json["pool_id"]
    r = post(client, f"/v3/domains/{domain['name']}/ips", operator["headers"], pool_id=pool_id)
    assert r.status_code == 200
    assert db.execute("SELECT pool_id FROM domain_ip_pools WHERE domain_id = %s",
                      (domain["id"],)).fetchone()["pool_id"] == pool_id
    owners = db.execute("SELECT address, account_id FROM ips ORDER BY address").fetchall()
    assert [o["account_id"] for o in owners] == [account["id"], account["id"], None]

    r = client.simulate_patch(f"/v1/ip_pools/{pool_id}", headers=operator["headers"],
                              body=urlencode({"add_ip": "127.0.0.4", "remove_ip": "127.0.0.2"}))
    assert r.status_code == 200, r.text
    r = client.simulate_get("/v3/ip_pools", headers=basic(api_key))  # the customer sees its pool
    [pool] = r.json["ip_pools"]
    assert pool["pool_id"] == pool_id and pool["ips"] == ["127.0.0.3", "127.0.0.4"] and pool["is_linked"] is True
    _, _, other_key = other_customer(services)
    assert client.simulate_get("/v3/ip_pools", headers=basic(other_key)).json["ip_pools"] == []

    r = client.simulate_delete(f"/v3/ip_pools/{pool_id}", headers=basic(operator["secret"]))
    assert r.status_code == 400  # linked: a replacement is required
    assert db.execute("SELECT count(*) AS n FROM ip_pools").fetchone()["n"] == 1
    r = client.simulate_delete(f"/v3/ip_pools/{pool_id}?ip=127.0.0.2", headers=basic(operator["secret"]))
    assert r.status_code == 200, r.text
    assert db.execute("SELECT count(*) AS n FROM ip_pools").fetchone()["n"] == 0
    assert client.simulate_get(f"/v3/domains/{domain['name']}/ips", headers=basic(api_key)).json == {
        "items": ["127.0.0.2"], "total_count": 1, "pool_id": None}
    actions = [r["action"] for r in db.execute("SELECT action FROM ip_audit ORDER BY id").fetchall()]
    assert {"pool.create", "pool.ip.add", "pool.assign", "domain.pool.link", "pool.ip.remove",
            "pool.delete"} <= set(actions)


def test_warmup_api_shows_stage_progress(client, services, db, operator, account, domain, api_key):
    add_ip(services, "127.0.0.2", dedicated=True)
    services.ips.add_domain_ip("test", domain, "127.0.0.2")
    r = post(client, "/v3/ip_warmups/127.0.0.2", operator["headers"], plan="1x3,2x10")
    assert r.status_code == 200
    db.execute("INSERT INTO ip_warmup_usage (address, day_no, day_cap, reserved, used)"
               " VALUES ('127.0.0.2', 0, 3, 3, 2)")
    [item] = client.simulate_get("/v3/ip_warmups", headers=basic(operator["secret"])).json["items"]
    assert item["ip"] == "127.0.0.2" and item["stage_number"] == 1 and item["throttle"] == 3
    assert item["sent_within_stage"] == "2" and item["sent_today"] == 2
    db.execute("UPDATE ip_warmups SET started_at = now() - interval '36 hours'")
    r = client.simulate_get("/v3/ip_warmups/127.0.0.2", headers=basic(api_key))  # the owner may read it
    details = r.json["details"]
    assert details["stage_number"] == 2 and details["throttle"] == 10 and details["total_stages"] == 2
    assert details["stage_history"][0]["limit"] == 3 and "completed_at" in details["stage_history"][0]
    assert client.simulate_get("/v3/ips", headers=basic(api_key)).json["details"][0]["is_on_warmup"] is True
    r = client.simulate_delete("/v3/ip_warmups/127.0.0.2", headers=basic(operator["secret"]))
    assert r.status_code == 200
    assert db.execute("SELECT count(*) AS n FROM ip_warmups").fetchone()["n"] == 0
    assert client.simulate_get("/v3/ip_warmups/127.0.0.2", headers=basic(operator["secret"])).status_code == 404


def test_export_csv_lists_dedicated_assignments(client, services, db, operator, account, domain):
    add_ip(services, "127.0.0.2", dedicated=True)
    add_ip(services, "127.0.0.3", dedicated=True)
    add_ip(services, "127.0.0.4")
    services.ips.add_domain_ip("test", domain, "127.0.0.2")
    r = client.simulate_get("/v3/ips/export", headers=basic(operator["secret"]))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["ip", "customer_id", "customer", "assigned_since"]
    assert len(rows) == 2
    assigned = db.execute("SELECT assigned_at FROM ips WHERE address = '127.0.0.2'").fetchone()["assigned_at"]
    assert rows[1][:3] == ["127.0.0.2", str(account["id"]), account["name"]]
    assert rows[1][3] == assigned.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_cli_assigns_exports_and_audits(services, settings, account, domain, db, clean_ips, monkeypatch,
                                        tmp_path):
    from envoi.cli import main

    monkeypatch.setenv("ENVOI_DATABASE_URL_EU", settings.database_url)
    monkeypatch.setenv("ENVOI_REDIS_URL_EU", settings.redis_url)
    monkeypatch.setenv("ENVOI_RELAY_HOST", "relay-a")
    monkeypatch.setenv("ENVOI_SECRET_KEY", base64.b64encode(settings.secret_key).decode())
    monkeypatch.setenv("ENVOI_LOOKUP_KEY", base64.b64encode(settings.lookup_key).decode())
    runner = CliRunner()
    r = runner.invoke(main, ["ips", "add", "127.0.0.2", "--helo", "o2.mta.test", "--dedicated"])
    assert r.exit_code == 0, r.output
    assert db.execute("SELECT host FROM ips WHERE address = '127.0.0.2'").fetchone()["host"] == "relay-a"
    r = runner.invoke(main, ["ips", "domain", "add", domain["name"], "127.0.0.2"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["ips", "domain", "add", domain["name"], "127.0.0.99"])
    assert r.exit_code != 0 and "not found" in r.output
    out = tmp_path / "ips.csv"
    r = runner.invoke(main, ["ips", "export", "-o", str(out)])
    assert r.exit_code == 0 and out.read_text().splitlines()[1].startswith(f"127.0.0.2,{account['id']},")
    r = runner.invoke(main, ["ips", "warmup", "start", "127.0.0.2", "--plan", "2x5,2x50"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["ips", "audit"])
    assert r.exit_code == 0 and "domain.ip.add" in r.output and "cli:" in r.output
    actors = {row["actor"] for row in db.execute("SELECT actor FROM ip_audit").fetchall()}
    assert len(actors) == 1 and actors.pop().startswith("cli:")


# accept-time check ----------------------------------------------------------------------------
def test_sending_ip_of_another_account_is_refused_with_403(client, services, db, account, domain, api_key):
    add_ip(services, "127.0.0.2", dedicated=True)
    add_ip(services, "127.0.0.3", dedicated=True)
    services.ips.add_domain_ip("test", domain, "127.0.0.2")
    _, other_domain, _ = other_customer(services)
    services.ips.add_domain_ip("test", other_domain, "127.0.0.3")
    pool = services.ips.create_pool("test", "theirs", account_id=other_domain["account_id"])

    def send(**extra):
        return send_form(client, api_key, domain, to="b@ips-403.invalid.test", **extra)

    def stored():
        return db.execute("SELECT count(*) AS n FROM messages WHERE domain_id = %s", (domain["id"],)).fetchone()["n"]

    r = send(**{"o:sending-ip": "127.0.0.3"})
    assert r.status_code == 403 and r.json == {"message": "Rejected: IP 127.0.0.3 can't be used to send the message"}
    assert send(**{"o:sending-ip": "127.0.0.4"}).status_code == 403  # not in the inventory at all
    r = send(**{"o:sending-ip-pool": pool["id"]})
    assert r.status_code == 403 and pool["id"] in r.json["message"]
    assert stored() == 0
    r = send(**{"o:sending-ip": "127.0.0.2"})
    assert r.status_code == 200, r.text
    assert stored() == 1
    options = db.execute("SELECT options FROM messages WHERE domain_id = %s", (domain["id"],)).fetchone()["options"]
    assert options["sending_ip"] == "127.0.0.2"
    db.execute("DELETE FROM messages WHERE domain_id = %s", (domain["id"],))  # leave no queued mail behind


# egress selection (in memory, no SMTP) ---------------------------------------------------------
def message(account_id, **options):
    return {"account_id": account_id, "options": options}


def test_egress_order_pools_hosts_and_owned_overrides(services, account, domain, clean_ips):
    host = services.settings.relay_host
    add_ip(services, "127.0.0.2", dedicated=True)
    add_ip(services, "127.0.0.3", dedicated=True)
    add_ip(services, "127.0.0.4", dedicated=True)
    add_ip(services, "127.0.0.5")
    add_ip(services, "127.0.0.6")
    add_ip(services, "127.0.0.7", host="another-relay")  # shared, but on another host
    add_ip(services, "127.0.0.8", dedicated=True, host="another-relay")
    services.ips.add_domain_ip("test", domain, "127.0.0.2")
    pooled = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.pooled.test", dkim_key_size=1024, verified=True)
    pool = services.ips.create_pool("test", "p", ips=["127.0.0.3", "127.0.0.4"])
    services.ips.link_pool("test", pooled, pool["id"])
    plain = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.plain.test", dkim_key_size=1024, verified=True)
    elsewhere = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.far.test", dkim_key_size=1024, verified=True)
    services.ips.add_domain_ip("test", elsewhere, "127.0.0.8")

    view = services.ips.egress_view(host=host, policy="overflow", refresh=60, default_helo="relay.test")
    view.sync()
    acct = account["id"]
    choice = view.choose(message(acct), domain)
    assert (choice.address, choice.helo, choice.via) == ("127.0.0.2", "o2.mta.test", "domain-ip")
    assert {view.choose(message(acct), pooled).address for _ in range(4)} == {"127.0.0.3", "127.0.0.4"}
    assert {view.choose(message(acct), plain).address for _ in range(6)} == {"127.0.0.5", "127.0.0.6"}
    # Dedicated IPs on another host: this relay never binds them; overflow sends via its shared pool.
    assert view.choose(message(acct), elsewhere).address in {"127.0.0.5", "127.0.0.6"}
    # Owned o:sending-ip / o:sending-ip-pool win over the domain's own setting.
    choice = view.choose(message(acct, sending_ip="127.0.0.3"), domain)
    assert (choice.address, choice.helo, choice.via) == ("127.0.0.3", "o3.mta.test", "sending-ip")
    assert view.choose(message(acct, sending_ip_pool=pool["id"]), plain).address in {"127.0.0.3", "127.0.0.4"}
    # An IP not owned by the account (refused at accept; revoked since) is ignored.
    assert view.choose(message(acct + 1000, sending_ip="127.0.0.2"), plain).address in {"127.0.0.5", "127.0.0.6"}
    # Disabled IPs are skipped after a refresh.
    services.ips.update_ip("test", "127.0.0.5", enabled=False)
    view.sync()
    assert {view.choose(message(acct), plain).address for _ in range(4)} == {"127.0.0.6"}
    wait = services.ips.egress_view(host=host, policy="wait", refresh=60, default_helo="relay.test")
    wait.sync()
    with pytest.raises(NoEgressAvailable):
        wait.choose(message(acct), elsewhere)
    # No inventory on this host at all: the OS default address and the configured HELO name.
    empty = services.ips.egress_view(host="no-such-host", policy="overflow", refresh=60, default_helo="relay.test")
    empty.sync()
    assert view.choose(message(acct, testmode=True), domain).address is None
    assert (empty.choose(message(acct), domain).address, empty.choose(message(acct), domain).helo) == (
        None, "relay.test")


def test_warmup_cap_is_never_exceeded_overflow_and_wait(services, db, account, domain, clean_ips):
    host = services.settings.relay_host
    add_ip(services, "127.0.0.2", dedicated=True)
    add_ip(services, "127.0.0.3", dedicated=True)
    add_ip(services, "127.0.0.5")
    pooled = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.pooled.test", dkim_key_size=1024, verified=True)
    pool = services.ips.create_pool("test", "p", ips=["127.0.0.2", "127.0.0.3"])
    services.ips.link_pool("test", pooled, pool["id"])
    services.ips.start_warmup("test", "127.0.0.2", "2x3")
    services.ips.start_warmup("test", "127.0.0.3", "2x2")

    view = services.ips.egress_view(host=host, policy="overflow", refresh=60, default_helo="relay.test")
    view.sync()
    picks = [view.choose(message(account["id"]), pooled).address for _ in range(10)]
    assert picks.count("127.0.0.2") == 3 and picks.count("127.0.0.3") == 2 and picks.count("127.0.0.5") == 5
    view.sync()  # another refresh reserves nothing more: the day's caps are spent
    assert view.choose(message(account["id"]), pooled).address == "127.0.0.5"
    view.stop()
    used = {r["address"]: (r["reserved"], r["used"]) for r in db.execute(
        "SELECT address, reserved, used FROM ip_warmup_usage").fetchall()}
    assert used == {"127.0.0.2": (3, 3), "127.0.0.3": (2, 2)}

    # A restarted relay (fresh view) still honours the caps recorded in Postgres.
    wait = services.ips.egress_view(host=host, policy="wait", refresh=60, default_helo="relay.test")
    wait.sync()
    with pytest.raises(NoEgressAvailable) as caught:
        wait.choose(message(account["id"]), pooled)
    assert caught.value.retry_after > 60  # the caps reset with the next warm-up day
    # Plain domains still use the shared pool while the warming IPs wait.
    assert wait.choose(message(account["id"]), domain).address == "127.0.0.5"


def test_two_relays_on_one_host_share_the_cap(services, db, account, domain, clean_ips):
    add_ip(services, "127.0.0.2", dedicated=True)
    services.ips.add_domain_ip("test", domain, "127.0.0.2")
    services.ips.start_warmup("test", "127.0.0.2", "1x40")
    views = [services.ips.egress_view(host=services.settings.relay_host, policy="wait", refresh=60,
                                      default_helo="x") for _ in range(2)]
    sent = 0
    for _ in range(5):
        for view in views:
            view.sync()
            for _ in range(30):
                try:
                    view.choose(message(account["id"]), domain)
                    sent += 1
                except NoEgressAvailable:
                    break
    assert sent == 40
    for view in views:
        view.stop()
    assert db.execute("SELECT used FROM ip_warmup_usage").fetchone()["used"] == 40


def test_the_relay_is_built_with_the_egress_chooser_and_suppressions(services, clean_ips):
    relay = runtime.build_relay(services)
    hook = relay.choose_egress
    assert relay.claimer.suppressions is services.suppressions and relay.recorder.suppressions is services.suppressions
    try:
        egress, carried = hook({"account_id": 1, "options": {}}, {"id": 1, "name": "x.test"}, 3)
        assert egress.address is None and egress.helo == services.settings.helo_name and carried == 3
    finally:
        hook.view.stop()


def test_dns_check_confirms_ptr_and_helo(services, clean_ips):
    from tests.support.dns_server import DnsServer

    add_ip(services, "127.0.0.2", helo="o2.mta.test")
    add_ip(services, "127.0.0.3", helo="o3.mta.test")
    with DnsServer() as dns:
        dns.add("2.0.0.127.in-addr.arpa", "PTR", "o2.mta.test.")
        dns.add("o2.mta.test", "A", "127.0.0.2")
        dns.add("3.0.0.127.in-addr.arpa", "PTR", "wrong.mta.test.")
        dns.add("o3.mta.test", "A", "127.0.0.9")
        rows = {r["ip"]: r for r in services.ips.dns_check(nameserver=("127.0.0.1", dns.port))}
    assert rows["127.0.0.2"]["ptr_ok"] and rows["127.0.0.2"]["helo_ok"]
    assert rows["127.0.0.3"]["ptr_found"] == ["wrong.mta.test"] and not rows["127.0.0.3"]["ptr_ok"]
    assert rows["127.0.0.3"]["helo_resolves_to"] == ["127.0.0.9"] and not rows["127.0.0.3"]["helo_ok"]


def test_stopping_a_view_records_usage_and_returns_unspent_quota(services, db, account, domain, clean_ips):
    add_ip(services, "127.0.0.2", dedicated=True)
    services.ips.add_domain_ip("test", domain, "127.0.0.2")
    services.ips.start_warmup("test", "127.0.0.2", "1x100")
    view = services.ips.egress_view(host=services.settings.relay_host, policy="wait", refresh=60, default_helo="x")
    view.sync()
    assert db.execute("SELECT reserved, used FROM ip_warmup_usage").fetchone() == {"reserved": 25, "used": 0}
    for _ in range(3):
        assert view.choose(message(account["id"]), domain).address == "127.0.0.2"
    view.stop()
    assert db.execute("SELECT reserved, used FROM ip_warmup_usage").fetchone() == {"reserved": 3, "used": 3}


def test_put_assigns_and_unassigns_taking_the_ip_off_domains_and_pools(client, services, db, operator, account,
                                                                       domain):
    add_ip(services, "127.0.0.2", dedicated=True)
    headers = operator["headers"]
    r = client.simulate_put("/v3/ips/127.0.0.2", headers=headers,
                            body=urlencode({"account_id": account["id"], "enabled": "maybe"}))
    assert r.status_code == 400  # validated before anything changes
    assert db.execute("SELECT account_id FROM ips").fetchone()["account_id"] is None
    r = client.simulate_put("/v3/ips/127.0.0.2", headers=headers,
                            body=urlencode({"account_id": account["id"], "helo": "New.Mta.Test."}))
    assert r.status_code == 200, r.text
    assert r.json["ip"]["account_id"] == account["id"] and r.json["ip"]["helo"] == "new.mta.test"
    services.ips.add_domain_ip("test", domain, "127.0.0.2")
    pool = services.ips.create_pool("test", "p", ips=["127.0.0.2"], account_id=account["id"])
    r = client.simulate_put("/v3/ips/127.0.0.2", headers=headers, body=urlencode({"account_id": ""}))
    assert r.status_code == 200, r.text
    assert db.execute("SELECT account_id, assigned_at FROM ips").fetchone() == {"account_id": None,
                                                                                "assigned_at": None}
    assert db.execute("SELECT count(*) AS n FROM domain_ips").fetchone()["n"] == 0
    assert db.execute("SELECT count(*) AS n FROM ip_pool_members WHERE pool_id = %s",
                      (pool["id"],)).fetchone()["n"] == 0
    tail = [r["action"] for r in db.execute("SELECT action FROM ip_audit ORDER BY id DESC LIMIT 3").fetchall()]
    assert tail == ["ip.unassign", "pool.ip.remove", "domain.ip.remove"]


def test_domain_ip_overflow_is_set_per_domain_through_put(client, services, db, account, domain, api_key):
    """PUT /v3|v4/domains/{d} ip_overflow=overflow|wait|default (Envoi extension): stored, NULL for
    default; a bad value is a 400 that changes nothing; another tenant's domain is a 404."""
    def stored(d):
        return db.execute("SELECT ip_overflow FROM domains WHERE id = %s", (d["id"],)).fetchone()["ip_overflow"]

    path = f"/v3/domains/{domain['name']}"
    assert client.simulate_put(path, headers={**basic(api_key), **FORM}, body="ip_overflow=wait").status_code == 200
    assert stored(domain) == "wait"
    r = client.simulate_put(f"/v4/domains/{domain['name']}", headers={**basic(api_key), **FORM},
                            body="ip_overflow=overflow")
    assert r.status_code == 200 and stored(domain) == "overflow"
    assert client.simulate_get(path, headers=basic(api_key)).json["domain"]["ip_overflow"] == "overflow"
    r = client.simulate_put(path, headers={**basic(api_key), **FORM}, body="ip_overflow=sometimes&spam_action=tag")
    assert r.status_code == 400 and r.json == {"message": "ip_overflow must be overflow, wait or default"}
    row = db.execute("SELECT ip_overflow, spam_action FROM domains WHERE id = %s", (domain["id"],)).fetchone()
    assert (row["ip_overflow"], row["spam_action"]) == ("overflow", domain["spam_action"])
    assert client.simulate_put(path, headers={**basic(api_key), **FORM}, body="spam_action=tag").status_code == 200
    assert stored(domain) == "overflow"  # not named: unchanged
    assert client.simulate_put(path, headers={**basic(api_key), **FORM}, body="ip_overflow=default").status_code == 200
    assert stored(domain) is None
    assert client.simulate_get(path, headers=basic(api_key)).json["domain"]["ip_overflow"] == "default"
    _, theirs, _ = other_customer(services)
    r = client.simulate_put(f"/v3/domains/{theirs['name']}", headers={**basic(api_key), **FORM},
                            body="ip_overflow=wait")
    assert r.status_code == 404 and stored(theirs) is None
