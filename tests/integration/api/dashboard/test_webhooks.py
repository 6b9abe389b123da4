"""Webhooks page: URLs per event type (set, change, delete), "Send test" as a real signed POST through
the worker's delivery path and SSRF guard to a local receiver, the attempts log with the request body,
the account's signing key. Same service as /v3/domains/{d}/webhooks; roles; tenant isolation."""

from __future__ import annotations

import re

import pytest

from envoi import runtime
from tests.support.webhook_receiver import Receiver


@pytest.fixture(scope="module")
def hook_settings(settings):
    return settings.replace(webhook_allow=("127.0.0.1/32",), webhook_timeout=5)  # the receiver is on loopback


@pytest.fixture(scope="module")
def api_services(hook_settings):
    """The dashboard under test serves services whose SSRF guard lets the loopback receiver through."""
    svc = runtime.build(hook_settings, pool_size=2)
    yield svc
    svc.close()


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def urls_of(db, domain_id: int, event_type: str) -> list[str]:
    return [r["url"] for r in db.execute("SELECT url FROM webhooks WHERE domain_id = %s AND event_type = %s"
                                         " ORDER BY id", (domain_id, event_type)).fetchall()]


def test_setting_changing_and_deleting_a_webhook(page_as, domain, db, api_services, receiver):
    page, name = page_as("developer"), domain["name"]
    a, b, c = receiver.url("/a"), receiver.url("/b"), receiver.url("/c")
    resp = page.post("/dashboard/webhooks/set", {"domain": name, "name": "delivered", "url": [a, "", ""]})
    assert resp.status_code == 303 and urls_of(db, domain["id"], "delivered") == [a]
    resp = page.post("/dashboard/webhooks/set", {"domain": name, "name": "delivered", "url": [b, c]})
    assert resp.status_code == 303
    assert urls_of(db, domain["id"], "delivered") == [b, c]
    assert api_services.webhooks.get(domain, "delivered") == {"webhook": {"urls": [b, c]}}  # as the API reads it
    html = page.get("/dashboard/webhooks", domain=name).text
    assert f'value="{c}"' in html
    resp = page.post("/dashboard/webhooks/delete", {"domain": name, "name": "delivered"})
    assert resp.status_code == 303 and urls_of(db, domain["id"], "delivered") == []


def test_a_refused_url_is_shown_and_changes_nothing(page_as, domain, db, receiver):
    page = page_as("admin")
    page.post("/dashboard/webhooks/set", {"domain": domain["name"], "name": "opened", "url": receiver.url("/ok")})
    resp = page.post("/dashboard/webhooks/set", {"domain": domain["name"], "name": "opened",
                                                  "url": "http://169.254.169.254/latest/meta-data"})
    assert resp.status_code == 400 and "Invalid url" in resp.text
    assert urls_of(db, domain["id"], "opened") == [receiver.url("/ok")]


def test_send_test_posts_a_signed_sample_to_the_receiver_and_logs_the_attempt(page_as, domain, receiver, db,
                                                                              api_services):
    receiver.signing_key = api_services.webhooks.signing_key(domain["account_id"])
    receiver.script = {"/bad": [503]}
    page = page_as("admin")
    page.post("/dashboard/webhooks/set", {"domain": domain["name"], "name": "permanent_fail",
                                          "url": [receiver.url("/ok"), receiver.url("/bad")]})
    resp = page.post("/dashboard/webhooks/test", {"domain": domain["name"], "name": "permanent_fail"})
    assert resp.status_code == 200 and "Test permanent_fail webhook sent to 2 URL(s)." in resp.text
    [ok], [bad] = receiver.got("/ok"), receiver.got("/bad")
    assert ok["valid"] and bad["valid"]  # Mailgun's signature, with the account's key
    data = ok["payload"]["event-data"]
    assert (data["event"], data["severity"], data["recipient"]) == ("failed", "permanent", "alice@example.com")
    result = re.search(rf'<tr data-test-url="{re.escape(receiver.url("/bad"))}">(.*?)</tr>', resp.text, re.S).group(1)
    assert "<td data-status>503</td>" in result and "reply 503" in result
    # logged like any delivery, with what was sent; a failed test is not retried
    rows = db.execute("SELECT status, attempts FROM webhook_deliveries WHERE domain_id = %s ORDER BY id",
                      (domain["id"],)).fetchall()
    assert [(r["status"], r["attempts"]) for r in rows] == [("delivered", 1), ("failed", 1)]
    html = page.get("/dashboard/webhooks", domain=domain["name"]).text
    assert html.count("<tr data-attempt=") == 2 and data["id"] in html and "<summary>Request body</summary>" in html


def test_the_ssrf_guard_refuses_loopback_when_settings_do_not_allow_it(services, domain, receiver, api_services):
    api_services.webhooks.create(domain, "clicked", [receiver.url("/ok")])  # allowed by the test settings
    [result] = services.webhooks.send_test(domain, "clicked")  # the default settings allow no loopback
    assert result["outcome"] == "failed" and result["status"] is None and result["error"]
    assert receiver.got("/ok") == []


def test_the_signing_key_is_shown_behind_details_and_regenerated(page_as, account, api_services):
    page = page_as("developer")
    old = api_services.webhooks.signing_key(account["id"])
    html = page.get("/dashboard/webhooks").text
    assert re.search(r"<details>\s*<summary>Show the signing key</summary>\s*<p><code id=\"signing-key\">"
                     + old, html)
    assert 'data-confirm="Make a new signing key?' in html
    resp = page.post("/dashboard/webhooks/signing-key", {})
    assert resp.status_code == 303
    new = api_services.webhooks.signing_key(account["id"])
    assert new != old and new in page.get("/dashboard/webhooks").text


@pytest.mark.parametrize("role", ["support", "analyst"])
def test_roles_without_manage_webhooks_get_403_and_change_nothing(page_as, role, domain, account, db,
                                                                  api_services):
    key = api_services.webhooks.signing_key(account["id"])
    page = page_as(role)
    resp = page.get("/dashboard/webhooks")
    assert resp.status_code == 403 and key not in resp.text
    assert page.post("/dashboard/webhooks/set", {"domain": domain["name"], "name": "opened",
                                                  "url": "http://127.0.0.1:9/"}).status_code == 403
    assert page.post("/dashboard/webhooks/signing-key", {}).status_code == 403
    assert urls_of(db, domain["id"], "opened") == [] and api_services.webhooks.signing_key(account["id"]) == key


def test_another_accounts_user_gets_404_everywhere_and_changes_nothing(page_as, services, domain, account, db,
                                                                       receiver, api_services):
    api_services.webhooks.create(domain, "delivered", [receiver.url("/owner")])
    key = api_services.webhooks.signing_key(account["id"])
    other = page_as("admin", of=services.accounts.create_account("other"))
    name = domain["name"]
    resp = other.get("/dashboard/webhooks", domain=name)
    assert resp.status_code == 404 and receiver.url("/owner") not in resp.text and key not in resp.text
    assert key not in other.get("/dashboard/webhooks").text  # their own page shows their own key
    for action, fields in [("set", {"name": "delivered", "url": "https://evil.example.com/"}),
                           ("delete", {"name": "delivered"}), ("test", {"name": "delivered"}),
                           ("signing-key", {})]:
        assert other.post(f"/dashboard/webhooks/{action}", {"domain": name, **fields}).status_code == 404, action
    assert urls_of(db, domain["id"], "delivered") == [receiver.url("/owner")]
    assert receiver.got("/owner") == [] and api_services.webhooks.signing_key(account["id"]) == key


def failing_endpoint(db, domain: dict, endpoint: str, waiting: int) -> None:
    """An endpoint of the domain's account failing for 3 hours (as the dispatcher records it), with
    `waiting` deliveries pending."""
    db.execute("INSERT INTO webhook_endpoint_health (account_id, endpoint, failing_since, failures, last_error,"
               " last_failure_at) VALUES (%s, %s, now() - interval '3 hours', 7, 'HTTP 503', now())",
               (domain["account_id"], endpoint))
    db.execute("INSERT INTO webhook_deliveries (account_id, domain_id, event_type, url, endpoint, event_id, payload)"
               " SELECT %s, %s, 'delivered', %s || '/hook', %s, 'e' || g, '{}' FROM generate_series(1, %s) g",
               (domain["account_id"], domain["id"], endpoint, endpoint, waiting))


def test_a_failing_endpoint_is_shown_since_when_with_its_backlog(page_as, domain, db):
    endpoint = f"https://down{domain['id']}.example"
    failing_endpoint(db, domain, endpoint, 4)
    try:
        html = page_as("developer").get("/dashboard/webhooks", domain=domain["name"]).text
        row = re.search(rf'<tr data-endpoint="{re.escape(endpoint)}">(.*?)</tr>', html, re.S).group(1)
        since = db.execute("SELECT failing_since FROM webhook_endpoint_health WHERE account_id = %s AND endpoint = %s",
                           (domain["account_id"], endpoint)).fetchone()["failing_since"]
        assert since.strftime("%Y-%m-%d %H:%M:%S UTC") in row
        assert re.search(r'data-field="backlog">4<', row) and "HTTP 503" in row
    finally:
        db.execute("DELETE FROM webhook_deliveries WHERE endpoint = %s", (endpoint,))
        db.execute("DELETE FROM webhook_endpoint_health WHERE endpoint = %s", (endpoint,))
