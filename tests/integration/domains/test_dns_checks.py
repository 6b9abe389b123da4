"""PUT /v3|v4/domains/{d}/verify looks every record up (SPF, DKIM, tracking CNAME, DMARC, MX) and returns
each one's `valid` as Mailgun does; `envoi scheduler`'s re-check finds a record that broke, records a
domain event in the audit log and makes the domain unverified again."""

from __future__ import annotations

from envoi import runtime
from envoi.accounts.audit import AuditFilter
from envoi.accounts.service import dns_targets
from tests.conftest import basic
from tests.integration.domains.conftest import DMARC_RUA, MX_HOSTS, SPF_INCLUDE, TRACKING_HOST, new_name
from tests.support.api import send_form


def valid_of(body: dict) -> dict:
    return {(r["record_type"], r["name"], r["value"]): r["valid"]
            for r in body["sending_dns_records"] + body["receiving_dns_records"]}


def publish(dns, row: dict, *, dkim: bool = True, cname: bool = True) -> None:
    name = row["name"]
    dns.add(name, "TXT", f"v=spf1 ip4:192.0.2.7 include:{SPF_INCLUDE} ~all")  # the customer's own SPF, ours in it
    if dkim:
        dns.add(f"envoi._domainkey.{name}", "TXT", f"v=DKIM1; k=rsa; p={row['dkim_public_key']}")
    if cname:
        dns.add(f"email.{name}", "CNAME", f"{TRACKING_HOST}.")
    dns.add(f"_dmarc.{name}", "TXT", "v=DMARC1; p=quarantine; rua=mailto:me@elsewhere.test")  # their own policy
    for host in MX_HOSTS:
        dns.add(name, "MX", f"10 {host}.")


def recheck(services, domain_settings, db, domain_id: int) -> None:
    """What `envoi scheduler` runs, for one batch: this domain, made the most overdue."""
    db.execute("UPDATE domains SET dns_checked_at = '-infinity' WHERE id = %s", (domain_id,))
    counts = services.accounts.recheck_domains(dns_targets(domain_settings), domain_settings.dns_resolver,
                                               domain_settings.domain_recheck_interval, batch=1, budget=0)
    assert counts["checked"] == 1
    assert db.execute("SELECT dns_checked_at FROM domains WHERE id = %s",
                      (domain_id,)).fetchone()["dns_checked_at"].year > 2000


def broken_events(services, account_id: int) -> list[dict]:
    return services.audit.list(account_id, AuditFilter(action="domain.dns_record_broken"))


def test_verify_checks_each_record_and_the_recheck_unverifies_a_domain_whose_dkim_broke(
        tenant, services, domain_settings, dns, db, server, client):
    account, key, sdk = tenant
    name = new_name("dns")
    # a receiving domain: the account has a route, so the MX records are asked for too
    assert sdk.routes.create(data={"expression": "catch_all()", "action": ["stop()"]}).status_code == 200
    assert sdk.domains.create(data={"name": name, "dkim_key_size": "1024"}).status_code == 200
    row = services.accounts.get_domain(name, account["id"])
    dkim = f"v=DKIM1; k=rsa; p={row['dkim_public_key']}"
    expected = {("TXT", name, f"v=spf1 include:{SPF_INCLUDE} ~all"), ("TXT", f"envoi._domainkey.{name}", dkim),
                ("CNAME", f"email.{name}", TRACKING_HOST), ("TXT", f"_dmarc.{name}", f"v=DMARC1; p=none; rua={DMARC_RUA}"),
                *(("MX", name, host) for host in MX_HOSTS)}

    # nothing published: every record invalid, still unverified
    body = sdk.domains.put(domain=name, verify=True).json()
    assert body["message"] == "Domain DNS records have been updated"
    assert valid_of(body) == dict.fromkeys(expected, "invalid") and body["domain"]["state"] == "unverified"

    publish(dns, row)
    resp = sdk.domains.put(domain=name, verify=True)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert valid_of(body) == dict.fromkeys(expected, "valid")
    assert body["domain"]["state"] == "active"
    spf = next(r for r in body["sending_dns_records"] if r["name"] == name)
    assert spf["cached"] == [f"v=spf1 ip4:192.0.2.7 include:{SPF_INCLUDE} ~all"]  # what was found
    # GET shows what the last check found (no lookup of its own)
    assert valid_of(sdk.domains.get(domain=name).json()) == dict.fromkeys(expected, "valid")
    assert "domains: re-check DNS records" in [t.name for t in runtime.periodic_tasks(services)]

    # the DNS server cannot answer for the DKIM name: unknown, which breaks nothing
    dns.servfail(f"envoi._domainkey.{name}")
    recheck(services, domain_settings, db, row["id"])
    assert services.accounts.get_domain(name, account["id"])["state"] == "active"
    assert broken_events(services, account["id"]) == []

    # the customer's zone loses the DKIM key and the tracking CNAME
    dns.clear()
    publish(dns, row, dkim=False, cname=False)
    recheck(services, domain_settings, db, row["id"])
    assert services.accounts.get_domain(name, account["id"])["state"] == "unverified"
    [event] = broken_events(services, account["id"])
    assert event["actor"] == "dns-check" and event["target"] == name
    assert event["details"] == {"state": "unverified", "records": [
        {"record_type": "TXT", "name": f"envoi._domainkey.{name}", "value": dkim},
        {"record_type": "CNAME", "name": f"email.{name}", "value": TRACKING_HOST}]}
    got = valid_of(sdk.domains.get(domain=name).json())
    assert got[("TXT", f"envoi._domainkey.{name}", dkim)] == "invalid"
    assert got[("CNAME", f"email.{name}", TRACKING_HOST)] == "invalid"
    assert got[("TXT", name, f"v=spf1 include:{SPF_INCLUDE} ~all")] == "valid"
    # unverified again: it sends to its account's authorised recipients only
    resp = send_form(client, key, name, to="stranger@dest.test")
    assert resp.status_code == 403 and "Unverified domains" in resp.json["message"]

    # republished: the next re-check verifies it again, and nothing new is reported
    publish(dns, row)
    recheck(services, domain_settings, db, row["id"])
    assert services.accounts.get_domain(name, account["id"])["state"] == "active"
    assert len(broken_events(services, account["id"])) == 1


def test_a_broken_optional_record_is_reported_but_keeps_the_domain_verified(tenant, services, domain_settings, dns,
                                                                            db):
    account, _, sdk = tenant
    name = new_name("opt")
    sdk.domains.create(data={"name": name, "dkim_key_size": "1024"})
    row = services.accounts.get_domain(name, account["id"])
    publish(dns, row)
    assert sdk.domains.put(domain=name, verify=True).json()["domain"]["state"] == "active"
    dns.clear()
    publish(dns, row, cname=False)
    body = sdk.domains.put(domain=name, verify=True).json()  # the customer's own verify finds it too
    assert body["domain"]["state"] == "active"
    assert valid_of(body)[("CNAME", f"email.{name}", TRACKING_HOST)] == "invalid"
    [event] = broken_events(services, account["id"])
    assert event["details"]["state"] == "active"
    assert [r["record_type"] for r in event["details"]["records"]] == ["CNAME"]


def test_an_operator_vouched_domain_without_records_is_never_unverified(services, account, domain, domain_settings,
                                                                        dns, db, api_key, client):
    # `envoi domains add --verified` (and envoi up's demo domain): no record was ever found valid
    recheck(services, domain_settings, db, domain["id"])
    assert services.accounts.get_domain(domain["name"], account["id"])["state"] == "active"
    assert broken_events(services, account["id"]) == []
    assert client.simulate_get(f"/v3/domains/{domain['name']}", headers=basic(api_key)).status_code == 200
