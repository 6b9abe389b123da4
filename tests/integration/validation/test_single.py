"""GET/POST /v4/address/validate over HTTP and through the official SDK, against the DNS test server."""

from __future__ import annotations

import time

import pytest

from envoi.api.app import create_app
from envoi.validation.errors import TooManyValidations
from tests.conftest import basic
from tests.integration.validation.conftest import DNS_TIMEOUT
from tests.support.api import post_form


def validate(client, key, address, **params):
    resp = client.simulate_get("/v4/address/validate", params={"address": address, **params}, headers=basic(key))
    assert resp.status_code == 200, resp.text
    return resp.json


def test_an_address_at_a_domain_with_mx_is_deliverable(client, api_key):
    assert validate(client, api_key, "jane@good.test") == {
        "address": "jane@good.test", "is_disposable_address": False, "is_role_address": False,
        "reason": [], "result": "deliverable", "risk": "low"}


def test_post_form_and_provider_lookup_are_accepted(client, api_key):
    resp = post_form(client, "/v4/address/validate", api_key, {"address": "jane@good.test", "provider_lookup": "false"})
    assert resp.status_code == 200 and resp.json["result"] == "deliverable"


def test_a_domain_with_only_an_address_record_receives_mail(client, api_key):
    assert validate(client, api_key, "x@aonly.test")["result"] == "deliverable"


@pytest.mark.parametrize("address", ["x@nullmx.test", "x@nowhere.test"])
def test_null_mx_and_missing_domain_are_undeliverable(client, api_key, address):
    answer = validate(client, api_key, address)
    assert (answer["result"], answer["risk"], answer["reason"]) == ("undeliverable", "high", ["no_mx"])


def test_role_address_is_flagged_with_medium_risk(client, api_key):
    answer = validate(client, api_key, "Postmaster@good.test")
    assert answer["is_role_address"] is True
    assert (answer["result"], answer["risk"], answer["reason"]) == ("deliverable", "medium", ["mailbox_is_role_address"])


def test_disposable_domain_is_do_not_send_without_a_dns_lookup(client, api_key, dns):
    answer = validate(client, api_key, "someone@mailinator.com")
    assert answer["is_disposable_address"] is True
    assert (answer["result"], answer["risk"]) == ("do_not_send", "high")
    assert "mailbox_is_disposable_address" in answer["reason"]
    assert dns.count("mailinator.com") == 0


def test_a_typo_of_a_popular_domain_gets_did_you_mean(client, api_key):
    answer = validate(client, api_key, "jane@gmai.com")
    assert answer["did_you_mean"] == "jane@gmail.com"
    assert answer["result"] == "undeliverable"  # gmai.com does not exist on the test server
    # gmial.com is on the disposable list (typo domains are squatted), and still gets the suggestion
    answer = validate(client, api_key, "jane@gmial.com")
    assert (answer["did_you_mean"], answer["result"]) == ("jane@gmail.com", "do_not_send")
    assert "did_you_mean" not in validate(client, api_key, "jane@good.test")


def test_bad_syntax_is_undeliverable(client, api_key, dns):
    before = len(dns.queries)
    answer = validate(client, api_key, "not an address@@good.test")
    assert (answer["result"], answer["risk"], answer["reason"]) == ("undeliverable", "high", ["failed_syntax_check"])
    assert len(dns.queries) == before


def test_a_dns_server_that_never_answers_gives_unknown_without_hanging(client, api_key):
    started = time.monotonic()
    answer = validate(client, api_key, "x@slow.test")
    assert time.monotonic() - started < DNS_TIMEOUT + 1.0
    assert (answer["result"], answer["risk"], answer["reason"]) == ("unknown", "unknown", ["no_data"])


def test_many_silent_domains_cost_one_deadline_not_one_each(validation_services):
    started = time.monotonic()
    answers = validation_services.validation.validate_many([f"x@slow{n}.test" for n in range(1, 5)] + ["y@good.test"])
    assert time.monotonic() - started < DNS_TIMEOUT + 1.0
    assert [a["result"] for a in answers] == ["unknown"] * 4 + ["deliverable"]


def test_missing_or_too_long_address_is_a_400(client, api_key):
    resp = client.simulate_get("/v4/address/validate", headers=basic(api_key))
    assert resp.status_code == 400 and resp.json == {"message": "address parameter is missing"}
    resp = client.simulate_get("/v4/address/validate", params={"address": "a" * 503 + "@good.test"},
                               headers=basic(api_key))
    assert resp.status_code == 400 and "512" in resp.json["message"]


def test_without_a_key_it_is_refused(client):
    assert client.simulate_get("/v4/address/validate", params={"address": "a@good.test"}).status_code == 401


def test_concurrent_validations_past_the_cap_get_429(validation_services, account):
    validation = validation_services.validation
    with validation.slot(account["id"]):
        held = [validation.slot(account["id"]) for _ in range(validation.concurrency - 1)]
        for slot in held:
            slot.__enter__()
        with pytest.raises(TooManyValidations) as refused:
            validation.slot(account["id"]).__enter__()
        assert refused.value.http_status == 429
        for slot in held:
            slot.__exit__(None, None, None)
        with validation.slot(account["id"]):
            pass  # a slot is free again


def test_validate_many_keeps_the_order(validation_services):
    answers = validation_services.validation.validate_many(["a@good.test", "b@nullmx.test", "bad"])
    assert [a["result"] for a in answers] == ["deliverable", "undeliverable", "undeliverable"]


def test_official_mailgun_sdk_validates(validation_services, api_key):
    from mailgun.client import Client

    from tests.support.events import AppServer

    with AppServer(create_app(validation_services.settings, validation_services)) as srv:
        sdk = Client(auth=("api", api_key), api_url=srv.url)
        resp = sdk.addressvalidate.get(filters={"address": "jane@good.test"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["result"] == "deliverable"
        resp = sdk.addressvalidate.get(filters={"address": "x@nullmx.test"})
        assert resp.json()["reason"] == ["no_mx"]
