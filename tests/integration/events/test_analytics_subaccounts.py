"""Mailgun's `subaccount` dimension and filter and `include_subaccounts` on the analytics APIs, through
the official SDK: a parent reads its subaccounts' numbers only when it asks, each grouped under the
subaccount's id (display_value its name), from the rollups and from the events alike; a subaccount and
another account never read the parent's or each other's."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
from mailgun.client import Client

from envoi.api.app import create_app
from tests.support.events import AppServer, record

BEHALF = "X-Mailgun-On-Behalf-Of"


@pytest.fixture(scope="module")
def server(services):
    with AppServer(create_app(services.settings, services)) as srv:
        yield srv


def tenant(services, server):
    account = services.accounts.create_account(f"an-{uuid.uuid4().hex[:6]}")
    domain = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.example.test", dkim_key_size=1024,
                                          verified=True)
    _, secret = services.accounts.create_key(account["id"], "admin")
    return account, domain, Client(auth=("api", secret), api_url=server.url)


def subaccount(services, sdk, name: str) -> tuple[str, dict]:
    resp = sdk.accounts_subaccounts.create(filters={"name": name})
    assert resp.status_code == 200, resp.text
    sub_id = resp.json()["subaccount"]["id"]
    domain = services.accounts.add_domain(int(sub_id), f"{uuid.uuid4().hex[:8]}.example.test", dkim_key_size=1024,
                                          verified=True)
    return sub_id, domain


def by_dimension(result: dict) -> dict:
    return {(i["dimensions"][0]["value"], i["dimensions"][0]["display_value"]): i["metrics"] for i in result["items"]}


def test_subaccount_dimension_filter_and_include_subaccounts(services, server):
    parent, own, sdk = tenant(services, server)
    shop_id, shop = subaccount(services, sdk, "shop")
    blog_id, blog = subaccount(services, sdk, "blog")
    stranger, foreign, foreign_sdk = tenant(services, server)
    foreign_sub_id, foreign_sub = subaccount(services, foreign_sdk, "theirs")
    now = time.time()
    for domain, n in ((own, 1), (shop, 2), (blog, 3), (foreign, 4), (foreign_sub, 5)):
        for i in range(n):
            record(services, domain, "accepted", method="http", ts=now, message_id=f"{i}-{domain['name']}")
            record(services, domain, "opened", ts=now, message_id=f"{i}-{domain['name']}")
    end = datetime.fromtimestamp(now + 60, UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")

    def metrics(client=sdk, metric="accepted_count", **body):
        resp = client.analytics_metrics.create(data={"duration": "1d", "end": end, "metrics": [metric],
                                                     "include_aggregates": True, **body})
        assert resp.status_code == 200, resp.text
        return resp.json()

    # Without include_subaccounts a parent reads its own domains only (Mailgun's default).
    assert metrics()["aggregates"]["metrics"]["accepted_count"] == 1
    assert by_dimension(metrics(dimensions=["subaccount"])) == {(str(parent["id"]), parent["name"]):
                                                                {"accepted_count": 1}}
    # With it, each subaccount's numbers under its id, display_value its name; from the rollups
    # (accepted_count) and from the events (a unique count) alike.
    for metric in ("accepted_count", "unique_opened_count"):
        result = metrics(metric=metric, dimensions=["subaccount"], include_subaccounts=True)
        assert by_dimension(result) == {(str(parent["id"]), parent["name"]): {metric: 1},
                                        (shop_id, "shop"): {metric: 2}, (blog_id, "blog"): {metric: 3}}
        assert result["aggregates"]["metrics"][metric] == 6
    # Filtered by subaccount id; with the domain as a second dimension.
    only = {"AND": [{"attribute": "subaccount", "comparator": "=", "values": [{"label": "shop", "value": shop_id}]}]}
    result = metrics(dimensions=["subaccount", "domain"], filter=only, include_subaccounts=True)
    assert [[d["value"] for d in i["dimensions"]] for i in result["items"]] == [[shop_id, shop["name"]]]
    assert result["aggregates"]["metrics"]["accepted_count"] == 2
    assert metrics(metric="unique_opened_count", filter=only,
                   include_subaccounts=True)["aggregates"]["metrics"]["unique_opened_count"] == 2
    not_shop = {"AND": [{"attribute": "subaccount", "comparator": "!=", "values": [{"value": shop_id}]}]}
    assert metrics(filter=not_shop, include_subaccounts=True)["aggregates"]["metrics"]["accepted_count"] == 4
    # Another account's subaccount matches nothing; neither do its numbers appear anywhere.
    theirs = {"AND": [{"attribute": "subaccount", "comparator": "=", "values": [{"value": foreign_sub_id}]}]}
    assert metrics(filter=theirs, include_subaccounts=True)["items"] == []
    assert by_dimension(metrics(client=foreign_sdk, dimensions=["subaccount"], include_subaccounts=True)) == {
        (str(stranger["id"]), stranger["name"]): {"accepted_count": 4}, (foreign_sub_id, "theirs"): {"accepted_count": 5}}
    # A subaccount (acting through its parent's key) reads its own numbers only, include_subaccounts or not.
    sub_view = sdk.analytics_metrics.create(data={"duration": "1d", "end": end, "metrics": ["accepted_count"],
                                                  "dimensions": ["subaccount"], "include_subaccounts": True},
                                            headers={BEHALF: shop_id})
    assert sub_view.status_code == 200, sub_view.text
    assert by_dimension(sub_view.json()) == {(shop_id, "shop"): {"accepted_count": 2}}

    # The usage metrics and the logs take include_subaccounts too.
    usage = sdk.analytics_usage_metrics.create(data={"duration": "1d", "end": end, "metrics": ["processed_count"],
                                                     "include_subaccounts": True, "include_aggregates": True})
    assert usage.status_code == 200, usage.text
    assert sum(i["metrics"]["processed_count"] for i in usage.json()["items"]) == 6
    start = datetime.fromtimestamp(now - 60, UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
    for include, names in ((False, {own["name"]}), (True, {own["name"], shop["name"], blog["name"]})):
        logs = sdk.analytics_logs.create(data={"start": start, "events": ["accepted"], "include_subaccounts": include})
        assert logs.status_code == 200, logs.text
        assert {i["domain"]["name"] for i in logs.json()["items"]} == names
