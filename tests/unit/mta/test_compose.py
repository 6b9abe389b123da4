"""compose(): Mailgun fields to RFC 5322 bytes that re-parse to exactly what was asked."""

from __future__ import annotations

import email
import email.policy

import pytest

from envoi.mta.compose import compose
from envoi.mta.errors import InvalidMessage


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_non_ascii_names_and_subject_round_trip():
    draft = compose("x.test", {"from": ["Jörg Müller <joerg@x.test>"], "to": ['Zoë <z@y.test>, "Doe, John" <j@y.test>'],
                               "subject": ["Grüße aus Köln — " + "long " * 30], "text": ["héllo"]}, [], [])
    raw = draft.copies[0].mime
    head = raw.split(b"\r\n\r\n")[0]
    assert head.isascii(), "headers must be 7-bit (RFC 2047 encoded words)"
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    msg = parse(raw)
    assert str(msg["From"]) == "Jörg Müller <joerg@x.test>"
    assert [str(a) for a in msg["To"].addresses] == ["Zoë <z@y.test>", '"Doe, John" <j@y.test>']
    assert msg["Subject"] == "Grüße aus Köln — " + "long " * 30
    assert msg.get_body(("plain",)).get_content().strip() == "héllo"


def test_long_recipient_list_is_folded_and_complete():
    to = [f"user{i}@example.test" for i in range(200)]
    draft = compose("x.test", {"from": ["a@x.test"], "to": [", ".join(to)], "text": ["t"]}, [], [])
    raw = draft.copies[0].mime
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert [a.addr_spec for a in parse(raw)["To"].addresses] == to
    assert draft.copies[0].recipients == to


def test_no_bare_lf_and_single_header_block():
    draft = compose("x.test", {"from": ["a@x.test"], "to": ["b@y.test"], "text": ["line1\nline2\n"],
                               "html": ["<p>x</p>"], "h:X-Trace": ["abc"]}, [], [])
    raw = draft.copies[0].mime
    assert b"\n" not in raw.replace(b"\r\n", b"")
    msg = parse(raw)
    assert msg["X-Trace"] == "abc" and msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "multipart/alternative"
    assert len(msg.get_all("Message-ID")) == 1 and len(msg.get_all("Date")) == 1


def test_reserved_headers_cannot_be_overridden():
    draft = compose("x.test", {"from": ["a@x.test"], "to": ["b@y.test"], "text": ["t"],
                               "h:Message-ID": ["<evil@x>"], "h:Bcc": ["spy@evil.test"]}, [], [])
    msg = parse(draft.copies[0].mime)
    assert msg["Message-ID"] == f"<{draft.message_id}>" and msg["Bcc"] is None


def test_batch_send_gives_each_recipient_its_own_copy():
    draft = compose("x.test", {"from": ["a@x.test"], "to": ["b@y.test, c@y.test"], "subject": ["Hi %recipient.name%"],
                               "text": ["Dear %recipient.name%"],
                               "recipient-variables": ['{"b@y.test": {"name": "Bea"}, "c@y.test": {"name": "Cy"}}']},
                    [], [])
    subjects = {c.recipients[0]: parse(c.mime)["Subject"] for c in draft.copies}
    assert subjects == {"b@y.test": "Hi Bea", "c@y.test": "Hi Cy"}
    assert all(parse(c.mime)["To"] == c.recipients[0] for c in draft.copies)


@pytest.mark.parametrize("name", ["Bad Name", "X:Y", "Ünï"])
def test_bad_header_names_are_refused(name):
    with pytest.raises(InvalidMessage):
        compose("x.test", {"from": ["a@x.test"], "to": ["b@y.test"], "text": ["t"], f"h:{name}": ["v"]}, [], [])


def test_date_header_is_the_current_second(monkeypatch):
    # The Date value is formatted once a second: each message still carries the second it was composed in.
    from datetime import UTC, datetime
    from email.utils import format_datetime

    import envoi.mta.compose as module

    for now in (1_800_000_000.25, 1_800_000_000.75, 1_800_000_001.5, 1_800_086_400.0):
        monkeypatch.setattr(module.time, "time", lambda now=now: now)
        raw = compose("x.test", {"from": ["a@x.test"], "to": ["b@y.test"], "text": ["t"]}, [], []).copies[0].mime
        assert f"\r\nDate: {format_datetime(datetime.fromtimestamp(int(now), UTC))}\r\n".encode() in raw
