"""X-Mailgun-* option headers: read into send fields and stripped at the byte level."""

from __future__ import annotations

import pytest

from envoi.mta.compose import parse_head
from envoi.mta.errors import InvalidMessage
from envoi.mta.senders import from_addresses as _from_addresses
from envoi.mta.submission.headers import extract
from envoi.mta.submission.server import has_bare_cr_or_lf

BODY = b"\r\nline one\r\nX-Mailgun-Tag: not-a-header (body)\r\n"


def test_message_without_options_is_unchanged_byte_for_byte():
    mime = b"From: a@b.test\r\nSubject: odd  spacing \t\r\n  and a fold\r\nX-Other: 1\r\n" + BODY
    assert extract(mime) == (mime, {}, None)


def test_options_are_read_and_every_x_mailgun_header_is_removed_with_its_folds():
    mime = (b"From: a@b.test\r\nX-Mailgun-Tag: one,two\r\nSubject: s\r\nx-mailgun-tag : three\r\n"
            b"X-Mailgun-Variables: {\"a\": 1,\r\n\t\"b\": \"x y\"}\r\nX-Mailgun-Track-Clicks: htmlonly\r\n"
            b"X-Mailgun-Deliver-By: Tue, 24 Nov 2026 10:00:00 +0000\r\nX-Mailgun-Sending-Ip-Pool: pool1\r\n"
            b"X-Mailgun-Template-Variables: {}\r\n  \r\nX-Mailgun-Dkim: no\r\nX-Keep: yes\r\n" + BODY)
    stripped, fields, rv = extract(mime)
    assert stripped == b"From: a@b.test\r\nSubject: s\r\nX-Keep: yes\r\n" + BODY
    assert fields == {"o:tag": ["one", "two", "three"], "v:a": ["1"], "v:b": ["x y"],
                      "o:tracking-clicks": ["htmlonly"], "o:deliverytime": ["Tue, 24 Nov 2026 10:00:00 +0000"],
                      "o:sending-ip-pool": ["pool1"], "o:dkim": ["no"],
                      "t:variables": ["{}"]}  # read (a stored template's data; docs/templates.md) and removed
    assert rv is None


def test_encoded_word_values_are_decoded():
    _, fields, _ = extract(b"From: a@b.test\r\nX-Mailgun-Tag: =?utf-8?q?caf=C3=A9?=\r\n\r\nx\r\n")
    assert fields == {"o:tag": ["café"]}


def test_headers_only_message_gets_a_body_separator():
    stripped, fields, _ = extract(b"From: a@b.test\r\nX-Mailgun-Drop-Message: yes\r\n")
    assert stripped == b"From: a@b.test\r\n\r\n" and fields == {"o:testmode": ["yes"]}


@pytest.mark.parametrize("header", [b"X-Mailgun-Variables: [1, 2]", b"X-Mailgun-Variables: {nope",
                                    b"X-Mailgun-Recipient-Variables: {\"a@b.test\": 3}"])
def test_bad_json_is_refused(header):
    with pytest.raises(InvalidMessage):
        extract(b"From: a@b.test\r\n" + header + b"\r\n\r\nx\r\n")


@pytest.mark.parametrize(("head", "expected"), [
    (b"From: Bench <bench@x.test>", ["bench@x.test"]),
    (b"From: a@x.test, b@y.test", ["a@x.test", "b@y.test"]),
    (b'From: "alice@x.test" <bob@evil.test>', ["bob@evil.test"]),
    (b"From: =?utf-8?q?Ann?= <a@x.test>", ["a@x.test"]),
    (b"Subject: s\r\nFrom: a@x.test\r\n\t(folded comment)", ["a@x.test"]),
])
def test_from_addresses_as_both_parsers_read_them(head, expected):
    assert _from_addresses(parse_head(head + b"\r\n\r\n")) == expected


@pytest.mark.parametrize("head", [
    b"From: alice@example.org)<bob@evil.test>",  # CVE-2023-27043: the parsers disagree
    b"From: alice@x.test <bob@evil.test>",
])
def test_from_read_differently_by_the_parsers_is_refused(head):
    with pytest.raises(InvalidMessage, match="ambiguous"):
        _from_addresses(parse_head(head + b"\r\n\r\n"))


def test_message_without_from_is_refused():
    with pytest.raises(InvalidMessage, match="no From"):
        _from_addresses(parse_head(b"Subject: nothing\r\nTo: a@x.test\r\n\r\n"))


@pytest.mark.parametrize(("data", "bare"), [
    (b"a\r\nb\r\n", False), (b"", False), (b"a\nb\r\n", True), (b"a\rb\r\n", True), (b"a\r\r\n", True),
    (b"a\n\r\n", True), (b"\r\n\r\n.\r\n", False), (b"a\r", True), (b"\n", True),
])
def test_bare_cr_or_lf(data, bare):
    assert has_bare_cr_or_lf(data) is bare
