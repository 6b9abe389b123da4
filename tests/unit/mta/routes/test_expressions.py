"""Route filters and actions: Mailgun's syntax parsed, evaluated by priority with captures and stop()."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from envoi.mta.routes.expressions import InvalidExpression, parse_action, parse_filter, plan
from envoi.mta.routes.parsed import strip_text


def headers(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject
    return msg


def routes(*specs):
    return [(f"r{n}", parse_filter(expr), [parse_action(a) for a in actions]) for n, (expr, *actions) in
            enumerate(specs)]


def test_captures_fill_destinations():
    found = plan(routes(("match_recipient('(?P<user>[^@]+)@in.example.com')", 'forward("https://x.test/\\g<user>")',
                         'forward("\\1@desk.example.net")')), "alice@in.example.com", headers("hi"))
    assert found.urls == ["https://x.test/alice"] and found.addresses == ["alice@desk.example.net"]


def test_every_match_runs_until_stop_and_non_matches_are_skipped():
    found = plan(routes(('match_header("subject", ".*urgent")', 'forward("https://a.test/u")'),
                        ('match_recipient("nobody@.*")', 'forward("https://a.test/n")'),
                        ('match_recipient("vip@.*")', "store(notify='https://a.test/s')", "stop()"),
                        ("catch_all()", 'forward("https://a.test/all")')),
                 "vip@in.example.com", headers("very URGENT"))
    assert found.route_ids == ["r0", "r2"] and found.urls == ["https://a.test/u"]
    assert found.store and found.notify == ["https://a.test/s"]


def test_and_joins_filters_and_a_header_filter_waits_for_the_message():
    flt = parse_filter('match_recipient("sales@.*") and match_header("subject", "quote")')
    assert flt.match("sales@x.test", headers("Quote please")) is not None
    assert flt.match("sales@x.test", headers("hello")) is None
    assert flt.match("sales@x.test") is not None  # at RCPT: the header is not known yet
    assert flt.match("other@x.test") is None


def test_a_capture_that_makes_no_address_is_dropped():
    found = plan(routes(('match_recipient("(.*)@in.test")', 'forward("\\1@out.test")')), 'a,b@in.test', None)
    assert found.addresses == []


@pytest.mark.parametrize("text", ["", "match_recipient()", "catch_all(", 'match_recipient("a") or catch_all()',
                                  'match_recipient("(")', 'match_header("bad name", "x")', "eval('x')",
                                  "catch_all()" + " " * 5000])
def test_bad_filters_are_refused(text):
    with pytest.raises(InvalidExpression):
        parse_filter(text)


@pytest.mark.parametrize("text", ["forward()", 'forward("")', 'forward("ftp://x")', 'forward("a b@c")',
                                  'store(notify="mailto:x@y")', "stop(1)", "drop()"])
def test_bad_actions_are_refused(text):
    with pytest.raises(InvalidExpression):
        parse_action(text)


def test_quoted_text_and_signature_are_stripped():
    assert strip_text("Yes.\n\nOn Tue, Bob wrote:\n> Ok?\n> ...\n-- \nAlice\n") == ("Yes.", "Alice")


def test_a_hostile_file_name_cannot_add_form_headers():
    from envoi.mta.routes.parsed import encode
    body, content_type = encode({"a": "b"}, [("attachment-1", 'x"\r\nContent-Type: text/html\r\n\r\n<script>',
                                              "image/png\r\nX-Evil: 1", b"data")])
    assert b"\r\nX-Evil" not in body and b'filename="x___Content-Type: text/html____<script>"' in body
    assert b"Content-Type: image/pngX-Evil1\r\n" in body
