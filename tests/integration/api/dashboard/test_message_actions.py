"""The message page's actions: resend a stored message (Mailgun's resend, the same service as POST on the
storage URL) and cancel what still waits (the same as DELETE on it); roles, suspension, tenant isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from envoi.api.dashboard.pages.logs import message_path
from tests.support.api import accepted, send_form


@pytest.fixture(autouse=True)
def nothing_left_queued(db, domain):
    """What these tests queue is never delivered: a relay started by a later test must not find it."""
    yield
    db.execute("UPDATE recipients SET status = 'failed' WHERE domain_id = %s AND status = 'queued'", (domain["id"],))


def later() -> str:
    return format_datetime(datetime.now(UTC) + timedelta(days=1))


def statuses(db, message_id: str) -> list[tuple[str, str]]:
    return [(r["address"], r["status"]) for r in db.execute(
        "SELECT r.address, r.status FROM recipients r JOIN messages m ON m.id = r.message_pk"
        " WHERE m.message_id = %s ORDER BY r.address", (message_id,)).fetchall()]


def test_a_scheduled_message_is_cancelled_from_its_page(client, api_key, domain, db, page_as):
    sent = accepted(send_form(client, api_key, domain, to="later@dest.test", **{"o:deliverytime": later()}))
    page = page_as("developer")
    path = message_path(domain["name"], sent.message_id)
    html = page.get(path).text
    assert 'id="cancel"' in html and 'id="resend"' in html
    resp = page.post(path + "/cancel")
    assert resp.status_code == 303 and resp.headers["location"] == path + "?done=cancelled"
    assert statuses(db, sent.message_id) == [("later@dest.test", "failed")]
    after = page.get(path + "?done=cancelled").text
    assert "What was still waiting is cancelled." in after and 'id="cancel"' not in after
    again = page.post(path + "/cancel")  # nothing waits any more: the service's 409, shown on the page
    assert again.status_code == 409 and 'role="alert"' in again.text


def test_a_stored_message_is_resent_to_new_recipients_as_a_new_message(client, api_key, domain, db, page_as):
    sent = accepted(send_form(client, api_key, domain, to="first@dest.test", subject="Receipt 42"))
    page = page_as("admin")
    path = message_path(domain["name"], sent.message_id)
    resp = page.post(path + "/resend", {"to": "second@dest.test, third@dest.test"})
    assert resp.status_code == 303 and resp.headers["location"].endswith("?done=resent")
    new_id = resp.headers["location"].split("/messages/")[1].split("?")[0]
    assert new_id != sent.message_id
    assert statuses(db, new_id) == [("second@dest.test", "queued"), ("third@dest.test", "queued")]
    assert statuses(db, sent.message_id) == [("first@dest.test", "queued")]  # the original is untouched
    new_page = page.get(resp.headers["location"]).text
    assert "Receipt 42" in new_page and "Resent: this is the new message." in new_page


def test_an_empty_recipient_list_changes_nothing(client, api_key, domain, db, page_as):
    sent = accepted(send_form(client, api_key, domain))
    page = page_as("admin")
    before = db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"]
    resp = page.post(message_path(domain["name"], sent.message_id) + "/resend", {"to": " , "})
    assert resp.status_code == 400 and "at least one recipient" in resp.text
    assert db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == before


def test_a_suspended_account_cannot_resend_from_the_page(client, services, api_key, account, domain, db, page_as):
    sent = accepted(send_form(client, api_key, domain))
    page = page_as("admin")
    services.accounts.suspend(account["id"], "unpaid", actor="test")
    before = db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"]
    resp = page.post(message_path(domain["name"], sent.message_id) + "/resend", {"to": "x@dest.test"})
    assert resp.status_code == 403 and "suspended" in resp.text
    assert db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == before


def test_roles_without_send_see_no_actions_and_are_refused(client, api_key, domain, db, page_as):
    sent = accepted(send_form(client, api_key, domain, **{"o:deliverytime": later()}))
    analyst = page_as("analyst")
    path = message_path(domain["name"], sent.message_id)
    html = analyst.get(path).text
    assert 'id="cancel"' not in html and 'id="resend"' not in html
    assert analyst.post(path + "/cancel").status_code == 403
    assert analyst.post(path + "/resend", {"to": "x@dest.test"}).status_code == 403
    assert statuses(db, sent.message_id) == [("rcpt@dest.test", "queued")]


def test_another_account_gets_404_and_changes_nothing(client, services, api_key, domain, db, page_as):
    sent = accepted(send_form(client, api_key, domain, **{"o:deliverytime": later()}))
    stranger = page_as("admin", of=services.accounts.create_account("stranger"))
    path = message_path(domain["name"], sent.message_id)
    before = db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"]
    assert stranger.post(path + "/cancel").status_code == 404
    assert stranger.post(path + "/resend", {"to": "x@dest.test"}).status_code == 404
    assert statuses(db, sent.message_id) == [("rcpt@dest.test", "queued")]
    assert db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == before
