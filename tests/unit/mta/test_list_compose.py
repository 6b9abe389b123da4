"""A list send's copies (compose with a ListExpansion): filled in from each member, and the same whether
a copy is filled in the template's raw bytes (the fast path) or built whole."""

from __future__ import annotations

import email
import email.policy

import pytest

from envoi.mta import compose as compose_module
from envoi.mta import substitution
from envoi.mta.compose import ListExpansion, compose
from envoi.mta.errors import InvalidMessage

LIST = "news@example.test"
MEMBERS = [
    {"address": "ann@dest.test", "name": "Ann", "vars": {"city": "Oslo", "n": 1}},
    {"address": "zoe@dest.test", "name": "Zoë", "vars": {"city": "Malmö"}},  # not ASCII: built whole
    {"address": "ml@dest.test", "name": "Multi", "vars": {"city": "line one\nline two"}},
]


def expansion(members=MEMBERS) -> ListExpansion:
    def substituter(message_id, member):
        return substitution.MemberSubstituter(member["address"], substitution.member_variables(member),
                                              f"https://t.example/l/{member['address']}")
    return ListExpansion(LIST, members, reply_to=LIST, substituter=substituter)


def send(**extra):
    fields = {"from": ["s@example.test"], "to": [f"News <{LIST}>", "plain@dest.test"],
              "subject": ["Hi %recipient.name%"],
              "text": ["Dear %recipient.name% of %recipient.city%\nLeave: %mailing_list_unsubscribe_url%\n"],
              "html": ["<p>%recipient.name%</p><a href='%mailing_list_unsubscribe_url%'>x</a>"], **extra}
    return compose("example.test", fields, [], [], lists=lambda addresses: {LIST: expansion()}
                   if LIST in addresses else {})


def parsed(copy):
    return email.message_from_bytes(copy.mime, policy=email.policy.default)


def body(msg, kind: str) -> str:
    return msg.get_body((kind,)).get_content().replace("\r\n", "\n")


def test_each_member_gets_its_own_filled_in_copy_and_the_others_one_copy():
    draft = send()
    by_rcpt = {tuple(c.recipients): parsed(c) for c in draft.copies}
    assert set(by_rcpt) == {("ann@dest.test",), ("zoe@dest.test",), ("ml@dest.test",), ("plain@dest.test",)}
    ann = by_rcpt[("ann@dest.test",)]
    assert ann["Subject"] == "Hi Ann" and ann["To"] == f"News <{LIST}>" and ann["Reply-To"] == LIST
    assert ann["List-Unsubscribe"] == "<https://t.example/l/ann@dest.test>"
    assert ann["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "Dear Ann of Oslo\nLeave: https://t.example/l/ann@dest.test" in body(ann, "plain")
    assert "href='https://t.example/l/ann@dest.test'" in body(ann, "html")
    zoe = by_rcpt[("zoe@dest.test",)]
    assert zoe["Subject"] == "Hi Zoë" and "Dear Zoë of Malmö" in body(zoe, "plain")
    assert "line one\nline two" in body(by_rcpt[("ml@dest.test",)], "plain")
    plain = by_rcpt[("plain@dest.test",)]  # not a member: placeholders as written, no Reply-To
    assert plain["Subject"] == "Hi %recipient.name%" and plain["Reply-To"] is None
    assert plain["List-Unsubscribe"] is None
    assert draft.expanded


@pytest.mark.parametrize("extra", [{}, {"h:X-Member": ["%recipient.name% %recipient.n%"]}, {"text": ["é %recipient.name%"]}])
def test_raw_fill_gives_what_building_gives(monkeypatch, extra):
    fast = {tuple(c.recipients): parsed(c) for c in send(**extra).copies}
    monkeypatch.setattr(compose_module, "_fill_raw", lambda template, sub: None)
    built = {tuple(c.recipients): parsed(c) for c in send(**extra).copies}
    assert set(fast) == set(built)
    for rcpt, msg in fast.items():
        other = built[rcpt]
        assert msg.get_content_type() == other.get_content_type()
        for name in ("Subject", "To", "Reply-To", "X-Member", "List-Unsubscribe", "List-Unsubscribe-Post"):
            assert msg[name] == other[name], (rcpt, name)
        for kind in ("plain", "html"):
            assert body(msg, kind) == body(other, kind)


def test_a_value_carrying_a_mime_boundary_cannot_split_its_copy():
    members = [{"address": "b@dest.test", "name": "B", "vars": {"city": "\n--===============0==\n\nX"}}]
    fields = {"from": ["s@example.test"], "to": [LIST], "subject": ["Hi"], "text": ["%recipient.city%"],
              "html": ["<p>%recipient.city%</p>"]}
    draft = compose("example.test", fields, [], [], lists=lambda addresses: {LIST: expansion(members)})
    msg = parsed(draft.copies[0])
    assert [p.get_content_type() for p in msg.walk()] == ["multipart/alternative", "text/plain", "text/html"]
    assert "===============0==" in body(msg, "plain")


def test_the_fast_path_is_taken_for_ascii_members(monkeypatch):
    calls = []
    real = compose_module._fill_raw
    monkeypatch.setattr(compose_module, "_fill_raw", lambda t, sub: calls.append(real(t, sub)) or calls[-1])
    send()
    assert [c is not None for c in calls] == [True, False, True]  # Zoë is built whole


def test_a_control_character_in_a_header_value_refuses_the_send():
    members = [{"address": "mal@dest.test", "name": "M", "vars": {"x": "a\r\nBcc: victim@dest.test"}}]
    fields = {"from": ["s@example.test"], "to": [LIST], "subject": ["Hi %recipient.x%"], "text": ["b"]}
    with pytest.raises(InvalidMessage, match="control character"):
        compose("example.test", fields, [], [], lists=lambda addresses: {LIST: expansion(members)})
