"""Batch sending's placeholders (envoi.mta.substitution) and callers' JSON (envoi.mta.jsonvalues)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envoi.mta import jsonvalues
from envoi.mta.errors import InvalidMessage
from envoi.mta.substitution import (
    MAX_LINE,
    BodyTemplate,
    HeadTemplate,
    Substituter,
    Unchanged,
    fill_head,
    fold,
    load,
    render,
    substitute_mime,
)


@pytest.mark.parametrize(("value", "text"), [
    ("Ann", "Ann"), ("", ""), (True, "true"), (False, "false"), (None, "null"), (7, "7"), (-1.5, "-1.5"),
    (1e100, "1e+100"), ({"a": 1, "b": [True, None]}, '{"a":1,"b":[true,null]}'), ([1, "é"], '[1,"é"]'),
    ({"nl": "a\nb"}, '{"nl":"a\\nb"}'),
])
def test_values_render_as_json_shows_them(value, text):
    assert render(value) == text


def test_placeholders_in_headers_and_bodies():
    sub = Substituter("ann@x.test", {"name": "Ann", "vip": True, "n": 3, "none": None})
    assert sub.header("Subject", "Hi %recipient.name% (%recipient%) %recipient.vip% %recipient.n%") == \
        "Hi Ann (ann@x.test) true 3"
    assert sub.header("Subject", "%recipient.missing%|%recipient.none%|%recipient.name") == "|null|%recipient.name"
    assert sub.body("Dear %recipient.name%") == "Dear Ann"
    assert Unchanged().header("Subject", "Hi %recipient.name%") == "Hi %recipient.name%"
    assert Substituter(None, {}).body("to %recipient% %recipient.name%.") == "to  ."


@pytest.mark.parametrize("value", ["x\r\nBcc: victim@evil.test", "x\nFrom: ceo@bank.test", "x\r\n\r\nnew body",
                                   "a\x00b", "a\x0bb", "a\x7fb", "\r"])
def test_control_characters_are_refused_in_headers_and_kept_in_bodies(value):
    sub = Substituter("ann@x.test", {"v": value})
    with pytest.raises(InvalidMessage, match="X-Foo header"):
        sub.header("X-Foo", "pre %recipient.v% post")
    assert sub.body("pre %recipient.v% post") == f"pre {value} post"


def test_nested_values_never_carry_raw_newlines_into_headers():
    sub = Substituter("a@x.test", {"o": {"k": "line\r\nBcc: x@evil.test"}})
    assert sub.header("Subject", "%recipient.o%") == '{"k":"line\\r\\nBcc: x@evil.test"}'


@pytest.mark.parametrize(("raw", "error"), [
    ("{nope", "is not a valid JSON"),
    ("[1, 2]", "must be an object keyed by recipient address"),
    ('{"a@x.test": 5}', "the value for 'a@x.test' must be an object"),
    ('{"a@x.test": ["x"]}', "the value for 'a@x.test' must be an object"),
    ('{"a@x.test": {"n": NaN}}', "is not a valid JSON"),
    ('{"a@x.test": {"n": 1e999}}', "is not a valid JSON"),
    ('{"a@x.test": {"n": "\\u0000"}}', "NUL character or invalid Unicode"),
    ('{"a@x.test": {"\\ud800": "x"}}', "NUL character or invalid Unicode"),
    ('{"a@x.test": {"n": "\\udfff"}}', "NUL character or invalid Unicode"),
    ('{"a@x.test": {"n": ' + "[" * 40 + "]" * 40 + "}}", "nested too deeply"),
    ('{"a@x.test": {"n": ' + "[" * 100_000 + "}}", "nested too deeply"),
])
def test_bad_recipient_variables_are_refused_clearly(raw, error):
    with pytest.raises(InvalidMessage, match=error):
        load(raw, "'recipient-variables' parameter")


def test_good_recipient_variables_load():
    raw = json.dumps({"a@x.test": {"n": "é\n", "deep": [[[[{"k": 1.5}]]]], "u": "\u00e9\U0001f600"}})
    assert load(raw, "rv")["a@x.test"]["deep"] == [[[[{"k": 1.5}]]]]
    assert load(raw, "rv")["a@x.test"]["u"] == "é😀"


def test_json_values_storable_in_postgres():
    assert jsonvalues.loads('{"a": [1, {"b": "c"}]}', "v:x") == {"a": [1, {"b": "c"}]}
    with pytest.raises(ValueError):
        jsonvalues.loads("[NaN]", "v:x")  # not JSON to Postgres: the caller keeps the raw string
    with pytest.raises(InvalidMessage, match="v:x contains a NUL"):
        jsonvalues.check_text("a\x00b", "v:x")
    with pytest.raises(InvalidMessage, match="invalid Unicode"):
        jsonvalues.check_text("a\ud800", "text")


# --- SMTP: the same substitution over a caller-built message's raw bytes ---------------------------

HEAD = b"From: a@x.test\r\nTo: b@y.test\r\n"


def test_smtp_substitution_renders_like_the_api():
    variables = {"a": True, "b": None, "c": 1.5, "d": {"k": [1, "x"]}, "name": "Ann"}
    mime = HEAD + b"Subject: %recipient.a% %recipient.b% %recipient.c% %recipient.d%\r\n\r\nHi %recipient.name%\r\n"
    out = substitute_mime(mime, "b@y.test", variables)
    api = Substituter("b@y.test", variables).header("Subject", "%recipient.a% %recipient.b% %recipient.c% %recipient.d%")
    assert f"Subject: {api}\r\n".encode() in out and api == 'true null 1.5 {"k":[1,"x"]}'
    assert out.endswith(b"\r\n\r\nHi Ann\r\n")


@pytest.mark.parametrize("value", ["x\r\nBcc: victim@evil.test", "x\nBcc: v@e.test", "x\rB", "\x00"])
def test_smtp_header_injection_is_refused(value):
    mime = HEAD + b"Subject: Hi %recipient.v%\r\n\r\nbody\r\n"
    with pytest.raises(InvalidMessage, match="Subject header"):
        substitute_mime(mime, "b@y.test", {"v": value})


def test_smtp_placeholders_in_header_names_are_left_alone():
    mime = HEAD + b"X-%recipient.v%: 1\r\n\r\nbody\r\n"
    assert substitute_mime(mime, "b@y.test", {"v": "x\r\nBcc: e@evil.test"}) == mime


def test_smtp_body_values_may_hold_newlines_which_become_crlf():
    mime = HEAD + b"Subject: s\r\n\r\nAddress:\r\n%recipient.addr%\r\n"
    out = substitute_mime(mime, "b@y.test", {"addr": "1 Main St\nSpringfield\r\nUSA"})
    assert out.endswith(b"\r\n\r\nAddress:\r\n1 Main St\r\nSpringfield\r\nUSA\r\n")


def test_smtp_long_headers_are_folded_and_overlong_lines_refused():
    mime = HEAD + b"Subject: %recipient.s%\r\n\r\nbody %recipient.b%\r\n"
    long_words = "word " * 500
    out = substitute_mime(mime, "b@y.test", {"s": long_words, "b": "x"})
    head = out.split(b"\r\n\r\n")[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= MAX_LINE
    assert b"Subject: " + long_words.encode() in head.replace(b"\r\n", b"")  # unfolding gives it back
    with pytest.raises(InvalidMessage, match="no white space to fold"):
        substitute_mime(mime, "b@y.test", {"s": "x" * 2000, "b": "x"})
    with pytest.raises(InvalidMessage, match="body line is longer"):
        substitute_mime(mime, "b@y.test", {"s": "s", "b": "x" * 2000})


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab \t"), max_size=4000), st.integers(1, 40))
def test_fold_is_exact_and_within_the_line_limit(value, name_len):
    line = b"X" * name_len + b": " + value.encode()
    try:
        folded = fold(line, name_len + 2)
    except InvalidMessage:
        assert len(line) > MAX_LINE
        return
    assert folded.replace(b"\r\n", b"") == line
    lines = folded.split(b"\r\n")
    assert all(len(x) <= MAX_LINE for x in lines)
    assert all(x[:1] in (b" ", b"\t") and x.strip(b" \t") for x in lines[1:])  # continuation, never blank


_BODY_PIECES = ["%recipient%", "%recipient.a%", "%recipient.b%", "%recipient.zz%", "%recipient.a", "%%", "\r\n", "x" * 990,
                "--", "\r\n--", "é", " "]
_VALUES = st.one_of(st.text(max_size=12), st.sampled_from(["", "\n--b", "y" * 40, "x" * 1000, "a\r\nb"]), st.integers(),
                    st.none(), st.dictionaries(st.sampled_from(["k"]), st.integers(), max_size=1))


@settings(max_examples=300, deadline=None)
@given(body=st.lists(st.one_of(st.sampled_from(_BODY_PIECES), st.text(max_size=8)), max_size=10).map("".join),
       head=st.sampled_from(["Subject: hi\r\n", "Subject: %recipient.a%\r\n", "X-A: %recipient%\r\n"]),
       variables=st.dictionaries(st.sampled_from(["a", "b"]), _VALUES, max_size=2))
def test_split_body_template_fills_as_substitute_mime_does(body, head, variables):
    """A batch send's body split once (BodyTemplate) and the head filled alone (fill_head) give
    substitute_mime's bytes for the whole message, or refuse it as it does."""
    mime = (head + "\r\n" + body).encode()
    end = mime.find(b"\r\n\r\n") + 2
    sub = Substituter("ann@x.test", variables)
    try:
        want = substitute_mime(mime, "ann@x.test", variables)
    except InvalidMessage:
        want = None
    try:
        got = fill_head(mime[:end], sub) + BodyTemplate(mime[end:]).fill(sub)
    except InvalidMessage:
        got = None
    assert got == want


_HEAD_FIELDS = ["Subject: %recipient.a%", "Subject: hi", "X-A: %recipient%", "X-B: %recipient.b% and %recipient.a%",
                " folded %recipient.a%", "\tfolded", "X-%recipient.a%: name", "no colon %recipient%", "X-L: " + "w " * 500,
                "X-É: %recipient.b%", "Reply-To: %recipient%"]


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(st.sampled_from(_HEAD_FIELDS), min_size=1, max_size=6),
       variables=st.dictionaries(st.sampled_from(["a", "b"]), _VALUES, max_size=2))
def test_head_template_fills_as_fill_head_does(fields, variables):
    """A batch send's head around its To line, split into fields once (HeadTemplate), gives fill_head's bytes,
    or refuses as it does, for every recipient."""
    head = "".join(f + "\r\n" for f in fields).encode()
    template = HeadTemplate(head)
    for address in ("ann@x.test", "bo@y.test"):
        sub = Substituter(address, variables)
        try:
            want = fill_head(head, sub)
        except InvalidMessage:
            want = None
        try:
            got = template.fill(sub)
        except InvalidMessage:
            got = None
        assert got == want
