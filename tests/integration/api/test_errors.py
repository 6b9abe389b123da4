"""An error a package raises reaches HTTP as Mailgun's {"message": ...} with its class's status, through
the one mapping of envoi.api.errors (no resource translates it), for each package's errors."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from falcon import testing

from envoi.api.app import create_app
from envoi.api.auth import PUBLIC
from tests.conftest import basic

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def client(settings, services):
    return testing.TestClient(create_app(settings, services))


def test_each_packages_errors_reach_http_with_their_status_and_message(client, domain, api_key):
    name = domain["name"]
    auth = basic(api_key)
    cases = [  # (package, response, status, message)
        ("accounts", client.simulate_get("/v3/domains/missing.example.test", headers=auth),
         404, "Domain not found: missing.example.test"),
        ("mta", client.simulate_put(f"/v3/domains/{name}/tracking/open", body=urlencode({"active": "maybe"}),
                                    headers={**FORM, **auth}), 400, "active must be yes or no"),
        ("mta", client.simulate_post("/v3/missing.example.test/messages", headers={**FORM, **auth},
                                     body=urlencode({"from": f"a@{name}", "to": "b@dest.test", "text": "x"})),
         404, "Domain not found: missing.example.test"),
        ("events", client.simulate_get(f"/v3/{name}/events", params={"limit": "0"}, headers=auth),
         400, "limit must be between 1 and 300"),
        ("webhooks", client.simulate_get(f"/v3/domains/{name}/webhooks/clicked", headers=auth),
         404, "Webhook not found"),
        ("suppression", client.simulate_get(f"/v3/{name}/bounces/nobody@dest.test", headers=auth),
         404, "Address not found in bounces table"),
        ("ips", client.simulate_get("/v3/ips/192.0.2.254", headers=auth), 404, None),
    ]
    for package, resp, status, message in cases:
        assert resp.status_code == status, (package, resp.text)
        assert list(resp.json) == ["message"], (package, resp.text)
        if message is not None:
            assert resp.json["message"] == message, package
        assert "Retry-After" not in resp.headers


def test_a_bad_last_event_id_is_a_400_from_the_events_package(client, services, domain, api_key):
    if services.stream is None:
        pytest.skip("no live stream in these services")
    resp = client.simulate_get(f"/v3/{domain['name']}/events/live", headers={**basic(api_key), "Last-Event-ID": "x"})
    assert resp.status_code == 400
    assert resp.json == {"message": "Last-Event-ID is not an id this stream gave out"}


def test_a_value_postgres_refuses_is_a_logged_400_with_a_fixed_message(settings, services, caplog):
    class Refused:  # a value no parameter reader checked: Postgres is the one to refuse it
        auth = PUBLIC

        def on_get(self, req, resp):
            with services.db.transaction() as conn:
                conn.execute("SELECT %s::int", (req.get_param("n"),))

    app = create_app(settings, services)
    app.add_route("/test/refused", Refused())
    with caplog.at_level("WARNING", logger="envoi.api.errors"):
        resp = testing.TestClient(app).simulate_get("/test/refused", params={"n": "twelve"})
    assert resp.status_code == 400
    assert resp.json == {"message": "a parameter value is invalid or out of range"}  # not the driver's text
    assert "twelve" in caplog.text  # the driver's text is in the log, so the missing check is found
