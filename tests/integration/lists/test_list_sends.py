"""A message to a list's address reaches its subscribed members, each with its own copy: through the API
and SMTP submission, filled in from the member (%recipient.*%, %mailing_list_unsubscribe_url%), delivered
by the relay to the sink; the member's unsubscribe link takes it off that list only; suppressions still
apply; a hostile member value never becomes a header."""

from __future__ import annotations

import email
import email.policy
import re
import time

import pytest

from tests.support.api import post_form, send_form
from tests.support.submission import mime, starttls_client

pytestmark = pytest.mark.usefixtures("clean_throttle")
BODY = "Hi %recipient.name%, from %recipient.city%. Leave: %mailing_list_unsubscribe_url%"


def arrived(sink, message_id: str, count: int, timeout: float = 60) -> dict[str, email.message.EmailMessage]:
    deadline = time.monotonic() + timeout
    got: dict = {}
    while time.monotonic() < deadline:
        got = {m["rcpt_tos"][0]: m["data"] for m in sink.messages() if message_id in m["data"]}
        if len(got) >= count:
            break
        time.sleep(0.2)
    return {rcpt: email.message_from_string(data, policy=email.policy.default) for rcpt, data in got.items()}


@pytest.fixture
def team(services, account, domain):
    address = f"team@{domain['name']}"
    services.lists.create(account["id"], {"address": address, "name": "Team"})
    services.lists.add_members_json(account["id"], address, [
        {"address": "ann@dest.test", "name": "Ann", "vars": {"city": "Oslo"}},
        {"address": "ben@dest.test", "name": "Ben", "vars": {"city": "Lima"}},
        {"address": "gone@dest.test", "name": "Gone", "subscribed": False},
    ], None)
    return address


def test_api_send_to_a_list_reaches_each_subscribed_member_filled_in(client, api_key, domain, team, sink, relay):
    resp = send_form(client, api_key, domain, to=team, subject="News for %recipient.name%", text=BODY)
    assert resp.status_code == 200, resp.text
    got = arrived(sink, resp.json["id"].strip("<>"), 2)
    assert set(got) == {"ann@dest.test", "ben@dest.test"}  # not the unsubscribed member
    for rcpt, name, city in (("ann@dest.test", "Ann", "Oslo"), ("ben@dest.test", "Ben", "Lima")):
        msg = got[rcpt]
        assert msg["Subject"] == f"News for {name}" and msg["To"] == team and msg["Reply-To"] == team
        text = msg.get_body(("plain",)).get_content()
        assert f"Hi {name}, from {city}." in text and "%mailing_list" not in text
        assert re.search(r"http://email\.[a-z0-9.-]+/l/[A-Za-z0-9_-]+", text)
        assert re.match(r"<http://email\.[a-z0-9.-]+/l/", msg["List-Unsubscribe"])
    time.sleep(0.5)
    assert not any("gone@dest.test" in m["rcpt_tos"] for m in sink.messages())


def test_smtp_send_to_a_list_reaches_each_member_filled_in(server, client_ctx, login, domain, team, sink, relay):
    with starttls_client(server, client_ctx, login) as c:
        c.sendmail(login, [team], mime(domain, subject="Hello %recipient.name%", to=team, body=BODY + "\r\n"))
    got = {}
    deadline = time.monotonic() + 60
    while len(got) < 2 and time.monotonic() < deadline:
        got = {m["rcpt_tos"][0]: email.message_from_string(m["data"], policy=email.policy.default)
               for m in sink.messages() if "Hello " in m["data"]}
        time.sleep(0.2)
    assert set(got) == {"ann@dest.test", "ben@dest.test"}
    assert got["ann@dest.test"]["Subject"] == "Hello Ann" and got["ben@dest.test"]["Subject"] == "Hello Ben"
    assert re.match(r"<http://email\.[a-z0-9.-]+/l/", got["ann@dest.test"]["List-Unsubscribe"])
    assert got["ann@dest.test"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert re.search(r"Hi Ben, from Lima\. Leave: http://email\.[a-z0-9.-]+/l/", got["ben@dest.test"].get_content())


def test_a_mime_message_to_a_list_through_the_api_is_expanded(client, api_key, domain, team, sink, relay):
    raw = mime(domain, subject="Dear %recipient.name%", to=team, body=BODY + "\r\n").decode()
    resp = post_form(client, f"/v3/{domain['name']}/messages.mime", api_key, {"to": team, "message": raw})
    assert resp.status_code == 200, resp.text
    got = arrived(sink, resp.json["id"].strip("<>"), 2)
    assert set(got) == {"ann@dest.test", "ben@dest.test"}
    assert got["ann@dest.test"]["Subject"] == "Dear Ann" and got["ann@dest.test"]["Reply-To"] == team
    assert re.search(r"Hi Ann, from Oslo\. Leave: http://email\.[a-z0-9.-]+/l/", got["ann@dest.test"].get_content())


def test_the_unsubscribe_link_takes_the_member_off_that_list_only(client, api_key, services, account, domain, team,
                                                                   sink, relay, db):
    other = f"other@{domain['name']}"
    services.lists.create(account["id"], {"address": other})
    services.lists.add_member(account["id"], other, {"address": "ann@dest.test"})
    resp = send_form(client, api_key, domain, to=team, text=BODY)
    got = arrived(sink, resp.json["id"].strip("<>"), 2)
    link = re.search(r"http://email\.[a-z0-9.-]+(/l/[A-Za-z0-9_-]+)", got["ann@dest.test"].get_content()).group(1)
    page = client.simulate_get(link)
    assert page.status_code == 200 and "ann@dest.test" in page.text and team in page.text
    assert services.lists.member(account["id"], team, "ann@dest.test")["member"]["subscribed"] is True  # GET: no
    done = client.simulate_post(link, body="List-Unsubscribe=One-Click",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert done.status_code == 200, done.text
    assert services.lists.member(account["id"], team, "ann@dest.test")["member"]["subscribed"] is False
    assert services.lists.member(account["id"], other, "ann@dest.test")["member"]["subscribed"] is True
    assert services.lists.member(account["id"], team, "ben@dest.test")["member"]["subscribed"] is True
    # not a domain-wide unsubscribe
    assert db.execute("SELECT count(*) AS n FROM suppress_unsubscribes WHERE domain_id = %s AND address_hash = %s",
                      (domain["id"], services.suppressions.vault.lookup("ann@dest.test"))).fetchone()["n"] == 0
    event = db.execute("SELECT data FROM events WHERE event = 'unsubscribed' AND recipient = 'ann@dest.test'"
                       " AND domain_id = %s", (domain["id"],)).fetchone()
    assert event["data"]["mailing-list"] == {"address": team}
    # a tampered link does nothing
    assert client.simulate_post(link[:-3] + "AAA").status_code == 404
    # the next send to the list skips her
    resp = send_form(client, api_key, domain, to=team, text="second %recipient.name%")
    again = arrived(sink, resp.json["id"].strip("<>"), 1)
    time.sleep(0.5)
    assert set(arrived(sink, resp.json["id"].strip("<>"), 1, timeout=1)) == {"ben@dest.test"} == set(again)


def test_suppressions_still_apply_to_members(client, api_key, domain, team, sink, relay, db):
    resp = post_form(client, f"/v3/{domain['name']}/unsubscribes", api_key, {"address": "ben@dest.test"})
    assert resp.status_code == 200, resp.text
    resp = send_form(client, api_key, domain, to=team, text=BODY)
    message_id = resp.json["id"].strip("<>")
    assert set(arrived(sink, message_id, 1)) == {"ann@dest.test"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        failed = db.execute("SELECT data FROM events WHERE message_id = %s AND event = 'failed'",
                            (message_id,)).fetchall()
        if failed:
            break
        time.sleep(0.2)
    assert [f["data"]["recipient"] for f in failed] == ["ben@dest.test"]


def test_hostile_member_values_never_become_headers(client, api_key, services, account, domain, db):
    address = f"hostile@{domain['name']}"
    services.lists.create(account["id"], {"address": address})
    # a name with CR LF is refused when the member is added
    resp = post_form(client, f"/v3/lists/{address}/members", api_key,
                     {"address": "eve@dest.test", "name": "Eve\r\nBcc: victim@dest.test"})
    assert resp.status_code == 400
    # vars may hold newlines (bodies), but not in a header: the send is refused, nothing is stored
    services.lists.add_member(account["id"], address, {"address": "mal@dest.test",
                                                       "vars": {"x": "ok\r\nBcc: victim@dest.test"}})
    before = db.execute("SELECT count(*) AS n FROM messages WHERE domain_id = %s", (domain["id"],)).fetchone()["n"]
    resp = send_form(client, api_key, domain, to=address, subject="Hi %recipient.x%", text="body %recipient.x%")
    assert resp.status_code == 400 and "control character" in resp.json["message"]
    assert db.execute("SELECT count(*) AS n FROM messages WHERE domain_id = %s",
                      (domain["id"],)).fetchone()["n"] == before
    # in the body it is just text
    resp = send_form(client, api_key, domain, to=address, subject="Hi", text="body %recipient.x%")
    assert resp.status_code == 200, resp.text
    row = db.execute("SELECT count(*) AS n FROM recipients r JOIN messages m ON m.id = r.message_pk"
                     " WHERE m.message_id = %s AND r.address = 'victim@dest.test'",
                     (resp.json["id"].strip("<>"),)).fetchone()
    assert row["n"] == 0


def test_a_list_of_another_account_is_not_expanded(client, services, account, domain, team):
    other = services.accounts.create_account("other-sender")
    other_domain = services.accounts.add_domain(other["id"], f"os-{account['id']}.example.test", dkim_key_size=1024,
                                                verified=True)
    _, key = services.accounts.create_key(other["id"], "admin")
    resp = send_form(client, key, other_domain, to=team, text="hi")
    assert resp.status_code == 200
    # the recipients are exactly the list address: nothing of the other account's members
    with services.db.transaction() as conn:
        got = conn.execute("SELECT r.address FROM recipients r JOIN messages m ON m.id = r.message_pk"
                           " WHERE m.message_id = %s", (resp.json["id"].strip("<>"),)).fetchall()
    assert [r["address"] for r in got] == [team]
