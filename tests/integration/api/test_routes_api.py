"""/v3/routes through the official Mailgun SDK and the API: Mailgun's shapes, paging, errors, and no
route of one account seen or changed by another."""

from __future__ import annotations

import pytest
from falcon import testing
from mailgun.client import Client

from envoi.api.app import create_app
from tests.conftest import basic
from tests.support.api import post_form
from tests.support.events import AppServer


def test_official_sdk_creates_lists_gets_updates_and_deletes(settings, services, api_key, account):
    with AppServer(create_app(settings, services)) as srv:
        sdk = Client(auth=("api", api_key), api_url=srv.url)
        created = sdk.routes.create(data={
            "priority": 3, "description": "support desk",
            "expression": 'match_recipient("support@example.test")',
            "action": ['forward("https://1.1.1.1/in")', "store()", "stop()"]})
        assert created.status_code == 200, created.text
        body = created.json()
        assert body["message"] == "Route has been created"
        route = body["route"]
        assert route["actions"] == ['forward("https://1.1.1.1/in")', "store()", "stop()"]
        assert route["priority"] == 3 and len(route["id"]) == 24 and route["created_at"].endswith("GMT")
        sdk.routes.create(data={"priority": 1, "expression": "catch_all()", "action": ["stop()"]})

        listed = sdk.routes.get(filters={"skip": 0, "limit": 1}).json()
        assert listed["total_count"] == 2 and [r["priority"] for r in listed["items"]] == [1]  # lower first
        assert [r["id"] for r in sdk.routes.get(filters={"skip": 1}).json()["items"]] == [route["id"]]
        assert sdk.routes.get(route_id=route["id"]).json()["route"]["description"] == "support desk"

        updated = sdk.routes.put(route_id=route["id"], data={"priority": 0, "action": ['forward("a@example.com")']})
        assert updated.json()["message"] == "Route has been updated"
        assert updated.json()["actions"] == ['forward("a@example.com")'] and updated.json()["priority"] == 0
        assert updated.json()["expression"] == 'match_recipient("support@example.test")'  # unchanged

        deleted = sdk.routes.delete(route_id=route["id"]).json()
        assert deleted == {"message": "Route has been deleted", "id": route["id"]}
        missing = sdk.routes.get(route_id=route["id"])
        assert missing.status_code == 404 and missing.json() == {"message": "Route not found"}
    assert services.routes.list(account["id"], None, None)["total_count"] == 1


@pytest.mark.parametrize("fields, message", [
    ({"action": "stop()"}, "expression parameter is missing"),
    ({"expression": "catch_all()"}, "action parameter is missing"),
    ({"expression": "match_recipient(", "action": "stop()"}, "Invalid expression"),
    ({"expression": 'match_recipient("(unclosed")', "action": "stop()"}, "Invalid regular expression"),
    ({"expression": "catch_all()", "action": "explode()"}, "Invalid action"),
    ({"expression": "catch_all()", "action": 'forward("not an address")'}, "Invalid forward destination"),
    ({"expression": "catch_all()", "action": "stop()", "priority": "high"}, "priority must be an integer"),
    ({"expression": "catch_all()", "action": 'forward("http://10.0.0.1/in")'}, "private or reserved"),
    ({"expression": "catch_all()", "action": 'store(notify="http://169.254.169.254/x")'}, "private or reserved"),
])
def test_bad_routes_are_refused_and_nothing_is_saved(client, services, api_key, account, fields, message):
    r = post_form(client, "/v3/routes", api_key, fields)
    assert r.status_code == 400 and message in r.json["message"], r.text
    assert services.routes.list(account["id"], None, None)["total_count"] == 0


def test_another_accounts_routes_are_invisible_and_untouchable(client, services, api_key, account):
    mine = post_form(client, "/v3/routes", api_key, {"expression": "catch_all()", "action": "stop()"}).json["route"]
    other = services.accounts.create_account("other-routes")
    _, other_key = services.accounts.create_key(other["id"], "admin")
    assert client.simulate_get("/v3/routes", headers=basic(other_key)).json == {"total_count": 0, "items": []}
    for method in ("simulate_get", "simulate_put", "simulate_delete"):
        r = getattr(client, method)(f"/v3/routes/{mine['id']}", headers=basic(other_key))
        assert r.status_code == 404, method
    assert client.simulate_get(f"/v3/routes/{mine['id']}", headers=basic(api_key)).json["route"] == mine


def test_paging_limits_are_checked(client, api_key):
    assert client.simulate_get("/v3/routes", params={"limit": "0"}, headers=basic(api_key)).status_code == 400
    assert client.simulate_get("/v3/routes", params={"limit": "1001"}, headers=basic(api_key)).status_code == 400
    assert client.simulate_get("/v3/routes", params={"skip": "x"}, headers=basic(api_key)).status_code == 400


def test_receiving_records_point_at_the_configured_inbound_mx(services, api_key, domain):
    settings = services.settings.replace(inbound_mx_hosts=("mxa.eu.envoi.example", "mxb.eu.envoi.example"))
    client = testing.TestClient(create_app(settings, services))
    r = client.simulate_get(f"/v3/domains/{domain['name']}", headers=basic(api_key))
    assert r.json["receiving_dns_records"] == []  # a sending-only domain is not asked to move its MX
    assert post_form(client, "/v3/routes", api_key, {"expression": "catch_all()", "action": "stop()"}).status_code == 200
    r = client.simulate_get(f"/v3/domains/{domain['name']}", headers=basic(api_key))
    assert [(x["record_type"], x["name"], x["value"], x["priority"]) for x in r.json["receiving_dns_records"]] == [
        ("MX", domain["name"], "mxa.eu.envoi.example", "10"), ("MX", domain["name"], "mxb.eu.envoi.example", "10")]
