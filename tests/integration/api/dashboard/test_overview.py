"""Overview: totals, charts and rates from the same stats service as /v3/{domain}/stats/total."""

from __future__ import annotations

import re

from tests.conftest import basic
from tests.support.api import send_form


def total(html: str, event: str) -> int:
    return int(re.search(rf'data-total="{event}">([\d,]+)<', html).group(1).replace(",", ""))


def test_what_was_accepted_shows_in_the_totals_and_the_chart(client, services, api_key, domain, page_as):
    for _ in range(3):
        assert send_form(client, api_key, domain).status_code == 200
    page = page_as("analyst")
    html = page.get("/dashboard/overview").text  # every domain of the account
    assert total(html, "accepted") == 3 and total(html, "delivered") == 0
    assert "<polyline" in html and "Accepted 3" in html
    one = page.get("/dashboard/overview", domain=domain["name"], resolution="day").text
    assert total(one, "accepted") == 3
    api = client.simulate_get(f"/v3/{domain['name']}/stats/total", params={"event": "accepted", "duration": "1d"},
                              headers=basic(api_key)).json
    assert sum(s["accepted"]["total"] for s in api["stats"]) == 3  # the same service as the API


def test_another_accounts_domain_is_a_404_and_shows_nothing(client, services, page_as, domain):
    other = services.accounts.create_account("other")
    page = page_as("admin", of=other)
    resp = page.get("/dashboard/overview", domain=domain["name"])
    assert resp.status_code == 404 and domain["name"] not in resp.text.replace(f"Domain not found: {domain['name']}", "")


def test_rates_turn_critical_past_the_thresholds():
    from envoi.api.dashboard.pages.overview import rates

    bounce, complaint = rates(delivered=90, bounced=10, complained=1)
    assert (bounce.level, round(bounce.value, 3)) == ("critical", 0.1)
    assert complaint.level == "critical"  # 1/90 > 0.5%
    assert [r.level for r in rates(delivered=1000, bounced=25, complained=1)] == ["warn", "warn"]
    assert [r.level for r in rates(delivered=0, bounced=0, complained=0)] == ["ok", "ok"]


def test_account_level_stats_sum_every_domain_of_the_account_only(client, services, account, api_key, domain):
    second = services.accounts.add_domain(account["id"], f"second-{domain['name']}", dkim_key_size=1024, verified=True)
    stranger = services.accounts.create_account("stranger")
    theirs = services.accounts.add_domain(stranger["id"], f"theirs-{domain['name']}", dkim_key_size=1024,
                                          verified=True)
    _, their_key = services.accounts.create_key(stranger["id"], "admin")
    assert send_form(client, api_key, domain).status_code == 200
    assert send_form(client, api_key, second).status_code == 200
    assert send_form(client, their_key, theirs).status_code == 200
    resp = client.simulate_get("/v3/stats/total", params={"event": "accepted", "duration": "1d"},
                               headers=basic(api_key))
    assert resp.status_code == 200
    assert sum(s["accepted"]["total"] for s in resp.json["stats"]) == 2  # not the stranger's
