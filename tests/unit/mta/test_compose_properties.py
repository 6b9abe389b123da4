"""Property: whatever recipient-variables and header templates a caller sends, compose() either refuses
the message (InvalidMessage) or writes exactly the header fields asked for, each value intact."""

from __future__ import annotations

import collections
import email.header
import email.policy
import json
import re
from email.parser import BytesParser

from hypothesis import given, settings
from hypothesis import strategies as st

from envoi.mta.compose import compose
from envoi.mta.errors import InvalidMessage

KEYS = ["a", "b", "c"]
RECIPIENTS = ["ann@y.test", "bob@y.test"]
# Pieces that have broken header writers: line breaks of every kind, header-looking text, encoded
# words, white space runs, non-ASCII, lone surrogates, and long runs with and without spaces.
NASTY = ["\r\n", "\n", "\r", "\r\n\r\n", "\x00", "\x0b", "\x7f", "\t", " ", "  ", "Bcc: spy@evil.test",
         "From: ceo@bank.test", ":", "=?utf-8?q?x?=", "é", "\u2028", "\x85", "\ud800", "%recipient%",
         "x" * 1200, "word " * 300, "ü" * 400]
text = st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=20)), max_size=6).map("".join)
scalars = st.one_of(text, st.booleans(), st.none(), st.integers(), st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=6)
template = st.lists(st.one_of(st.sampled_from([f"%recipient.{k}%" for k in KEYS] + ["%recipient%", "%recipient.zz%"]),
                              st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=15)),
                    max_size=5).map("".join)


def expected_value(template_text: str, address: str, variables: dict) -> str:
    def one(m: re.Match) -> str:
        if m.group(1) is None:
            return address
        value = variables.get(m.group(1), "")
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    return re.sub(r"%recipient(?:\.([A-Za-z0-9_\-:]+))?%", one, template_text)


def field_value(raw: str) -> str:
    """A header's value as written: unfolded, RFC 2047 encoded words decoded when it is made of them."""
    unfolded = raw.replace("\r\n", "")
    parts = email.header.decode_header(unfolded)
    if any(charset for _, charset in parts):
        return "".join(p.decode(c or "ascii") if isinstance(p, bytes) else p for p, c in parts)
    return unfolded


@settings(max_examples=200, deadline=None)
@given(variables=st.fixed_dictionaries({r: st.dictionaries(st.sampled_from(KEYS), json_values, max_size=3)
                                        for r in RECIPIENTS}),
       subject=template, foo=template, body=template)
def test_header_block_is_exactly_what_was_asked(variables, subject, foo, body):
    fields = {"from": ["Sender <s@x.test>"], "to": [", ".join(RECIPIENTS)], "subject": [subject],
              "text": [body or "t"], "h:X-Foo": [foo], "recipient-variables": [json.dumps(variables)]}
    try:
        draft = compose("x.test", fields, [], [])
    except InvalidMessage:
        return
    assert sorted(c.recipients[0] for c in draft.copies) == RECIPIENTS
    for copy in draft.copies:
        address = copy.recipients[0]
        head = copy.mime[: copy.mime.index(b"\r\n\r\n") + 4]
        assert head.isascii() and all(len(line) <= 998 for line in head.split(b"\r\n"))
        msg = BytesParser(policy=email.policy.compat32).parsebytes(head, headersonly=True)
        names = collections.Counter(name.lower() for name in msg)
        assert names == collections.Counter(["from", "to", "subject", "date", "message-id", "x-foo", "mime-version",
                                             "content-type", "content-transfer-encoding"]), names
        assert msg.defects == [] and msg["Bcc"] is None
        assert field_value(msg["To"]) == address
        for name, tmpl in (("Subject", subject), ("X-Foo", foo)):
            want = expected_value(tmpl, address, variables[address])
            # A value that itself looks like an encoded word ('["=?utf-8?q?x?="]') is written as given:
            # then the unfolded raw text is what was asked, and decoding it would not be.
            written = {field_value(msg[name]), msg[name].replace("\r\n", "")}
            assert written & {want, want.lstrip(" \t")}, name
