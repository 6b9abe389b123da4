"""Mail from outside to a mailing list's address, over loopback SMTP into the real inbound MX (wired as
`envoi inbound` wires it): the list's access level decides at RCPT who may post, and an accepted post
reaches each subscribed member through the relay at the sink, filled in per member."""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
import time
import uuid
from email.message import EmailMessage

import pytest

from envoi import runtime
from envoi.events.stats import dimensions

pytestmark = pytest.mark.usefixtures("clean_throttle")


@pytest.fixture(scope="module")
def mx(services):
    with runtime.build_inbound(services, host="127.0.0.1", port=0) as server:
        yield server


def make_list(services, account, domain, access_level: str) -> str:
    address = f"list-{uuid.uuid4().hex[:6]}@{domain['name']}"
    services.lists.create(account["id"], {"address": address, "name": "Team", "access_level": access_level})
    services.lists.add_members_json(account["id"], address, [
        {"address": "ann@dest.test", "name": "Ann"},
        {"address": "ben@dest.test", "name": "Ben"},
        {"address": "gone@dest.test", "name": "Gone", "subscribed": False},
    ], None)
    return address


def post(sender: str, to: str, subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@outside.test>"
    msg.set_content("Hi %recipient.name%, news from outside.\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def rcpt(mx, sender: str, to: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail(sender)
        return smtp.rcpt(to)


def arrived(sink, subject: str, count: int, timeout: float = 30) -> dict[str, email.message.EmailMessage]:
    deadline = time.monotonic() + timeout
    got: dict = {}
    while time.monotonic() < deadline:
        got = {m["rcpt_tos"][0]: m["data"] for m in sink.messages() if f"Subject: {subject}" in m["data"]}
        if len(got) >= count:
            break
        time.sleep(0.2)
    return {r: email.message_from_string(data, policy=email.policy.default) for r, data in got.items()}


def stored_for(services, address: str) -> int:
    with services.db.transaction() as conn:
        return conn.execute("SELECT count(*) AS n FROM inbound_messages WHERE recipient = %s",
                            (address,)).fetchone()["n"]


def test_everyone_list_takes_a_strangers_post_to_each_subscribed_member(services, mx, sink, relay, account, domain):
    team = make_list(services, account, domain, "everyone")
    subject = f"Open {uuid.uuid4().hex[:6]}"
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as smtp:
        smtp.sendmail("stranger@outside.test", [team], post("Stranger <stranger@outside.test>", team, subject))
    got = arrived(sink, subject, 2)
    assert set(got) == {"ann@dest.test", "ben@dest.test"}
    for member, name in (("ann@dest.test", "Ann"), ("ben@dest.test", "Ben")):
        msg = got[member]
        assert msg["From"] == "Stranger <stranger@outside.test>" and msg["To"] == team and msg["Reply-To"] == team
        assert msg["X-Envoi-Forwarded"] == team  # a hop: a list looping back into itself is cut
        assert re.match(r"<http://email\.[a-z0-9.-]+/l/", msg["List-Unsubscribe"])  # the tracking host
        assert f"Hi {name}, news from outside." in msg.get_content()
    time.sleep(0.5)
    assert not any("gone@dest.test" in m["rcpt_tos"] for m in sink.messages())
    with services.db.transaction() as conn:
        [accepted] = conn.execute("SELECT data FROM events WHERE account_id = %s AND recipient = %s"
                                  " AND data->>'event' = 'accepted'", (account["id"], team)).fetchall()
    assert accepted["data"]["flags"]["is-routed"] is False
    assert accepted["data"]["mailing-list"] == {"address": team}
    assert dimensions(accepted["data"])[3] == "incoming"  # stats: accepted.incoming, not the account's sending


def test_members_list_takes_a_members_post_and_refuses_a_strangers(services, mx, sink, relay, account, domain):
    team = make_list(services, account, domain, "members")
    code, text = rcpt(mx, "stranger@outside.test", team)
    assert (code, text) == (550, b"5.7.1 Not allowed to post to this mailing list")
    code, _ = rcpt(mx, "gone@dest.test", team)  # an unsubscribed member is still a member
    assert code == 250
    assert stored_for(services, team) == 0  # a refused RCPT stores nothing
    subject = f"Members {uuid.uuid4().hex[:6]}"
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as smtp:
        smtp.sendmail("Ann@dest.test", [team], post("Ann <ann@dest.test>", team, subject))
    got = arrived(sink, subject, 2)
    assert set(got) == {"ann@dest.test", "ben@dest.test"}
    assert "Hi Ben, news from outside." in got["ben@dest.test"].get_content()


def test_readonly_list_refuses_everyone_from_outside(services, mx, account, domain):
    team = make_list(services, account, domain, "readonly")
    for sender in ("ann@dest.test", "stranger@outside.test", ""):
        code, text = rcpt(mx, sender, team)
        assert (code, text) == (550, b"5.7.1 Not allowed to post to this mailing list"), sender
    assert stored_for(services, team) == 0


def test_a_route_matching_the_list_address_takes_precedence(services, mx, sink, relay, account, domain):
    team = make_list(services, account, domain, "readonly")
    services.routes.create(account["id"], priority="0", description="t", expression=f'match_recipient("{team}")',
                           actions=["store()"])
    time.sleep(2.1)  # the MX's route cache
    code, _ = rcpt(mx, "stranger@outside.test", team)
    assert code == 250  # the route takes it, whatever the list's access level
