"""The byte-level body writer (envoi.mta.mime_body) writes exactly the email package's bytes.

Both writers draw their MIME boundaries from `random`, so each comparison seeds it the same way
before each writer. Compared: the bodies alone over generated bodies, inline parts and attachments;
whole compose() sends over generated fields (names, subjects, custom headers, tags, variables, cc/bcc,
batch sends); and a fixed corpus of edge cases. A shape the fast writer does not cover must fall
back (None), never differ; the common shapes must be covered.
"""

from __future__ import annotations

import email
import email.policy
import json
import random
import sys
from email.generator import BytesGenerator
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envoi.mta import compose as compose_module
from envoi.mta import mime_body
from envoi.mta.compose import Upload, compose, email_body
from envoi.mta.errors import InvalidMessage, MessageTooLarge

# Pieces that change how a body is encoded: every line break, long lines (the 998-octet limit, in
# octets: "é" is two), non-ASCII, NUL-free control characters, and text that looks like a boundary.
PIECES = ["\r\n", "\n", "\r", "\r\n\r\n", "\n\n", " ", "\t", "\x0b", "\x0c", "é", "日本", "\u2028", "\x85", "😀",
          "x" * 997, "x" * 998, "x" * 999, "é" * 499, "é" * 500, "--", "=" * 15, "--===============",
          "From here", ".", "\r\n.\r\n", "<p>hi</p>"]
body_text = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=30)), max_size=8).map("".join)
optional_body = st.one_of(st.none(), body_text)
# (maintype, subtype) as compose._content_type gives them: declared, guessed or the default.
MEDIA = st.sampled_from([("application", "pdf"), ("image", "png"), ("image", "jpeg"), ("text", "plain"),
                         ("text", "csv"), ("application", "octet-stream"), ("application", "vnd.ms-excel"),
                         ("application", "vnd.openxmlformats-officedocument.wordprocessingml.document"),
                         ("audio", "mpeg"), ("x-custom", "x.thing+json"), ("application", "x_under"),
                         ("image", "svg+xml"), ("message", "rfc822"), ("multipart", "mixed"), ("text", "X-Upper")])
NAMES = st.one_of(
    st.sampled_from(["report.pdf", "logo.png", "a b.txt", "Invoice (March).pdf", "naïve.txt", "日本語.doc",
                     "x" * 300, "é" * 200, "=?utf-8?q?caf=C3=A9?=.pdf", 'quo"te.txt', "back\\slash.txt",
                     " lead.txt", "trail.txt ", "two  spaces.txt", "semi;colon.txt", "percent%20.txt",
                     "tab\tname.txt", "x" * 980, "a'b.txt", "(comment).txt", "emoji😀.png", "a,b.csv"]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"),
            min_size=1, max_size=40))
DATA = st.one_of(st.binary(max_size=2000), st.sampled_from([b"", b"\x00" * 747, b"y" * 748, b"z" * 1494 + b"!"]))
uploads = st.lists(st.tuples(MEDIA, NAMES, DATA).map(lambda t: (*t[0], t[1], t[2])), max_size=3)


def both(text, html, amp, inlines, attachments, seed):
    """(fast, email package): the fast writer's bytes (None where it falls back) and the email package's,
    each after seeding random alike; the email package's error, if it raised, in place of its bytes."""
    random.seed(seed)
    fast = mime_body.build(text, html, amp, inlines, attachments)
    random.seed(seed)
    try:
        reference = email_body(text, html, amp, inlines, attachments)
    except (ValueError, TypeError, UnicodeError) as ex:
        reference = ex
    return fast, reference


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=optional_body, html=optional_body, amp=st.one_of(st.none(), st.none(), body_text),
       inlines=uploads, attachments=uploads, seed=st.integers(0, 2**32))
def test_fast_body_is_the_email_packages_bytes(text, html, amp, inlines, attachments, seed):
    if text is None and html is None and amp is None:
        html = ""
    fast, reference = both(text, html, amp, inlines, attachments, seed)
    if fast is not None:
        assert fast == reference


CORPUS = [
    # (text, html, amp, inlines, attachments)
    ("hello", None, None, [], []),
    (None, "<p>hi</p>", None, [], []),
    ("hello", "<p>hi</p>", None, [], []),
    ("héllo wörld\n", "<p>héllo</p>", None, [], []),
    ("a\r\nb\nc\rd", "<p>\r\n</p>", None, [], []),
    ("", "", None, [], []),
    ("\n", None, None, [], []),
    ("x" * 998, None, None, [], []),
    ("é" * 499, None, None, [], []),
    ("t", "<p>h</p>", "<amp/>", [], []),
    (None, "<p>h</p>", "<amp/>", [], []),
    (None, None, "<amp/>", [], []),
    ("t", "<img src=cid:logo.png>", None, [("image", "png", "logo.png", b"\x89PNG" * 100)], []),
    (None, "<img src=cid:logo.png>", None, [("image", "png", "logo.png", b"\x89PNG")], []),
    ("only text", None, None, [("image", "gif", "a.gif", b"GIF")], []),
    ("t", "h", None, [("image", "png", "a.png", b"1"), ("image", "png", "b.png", b"2")],
     [("application", "pdf", "r.pdf", b"%PDF" * 1000), ("text", "csv", "naïve,x.csv", b"a,b\n")]),
    ("t", None, None, [], [("application", "octet-stream", "empty.bin", b"")]),
    ("t", None, None, [], [("application", "octet-stream", "x.bin", b"q" * 747)]),
    ("t", None, None, [], [("application", "octet-stream", "x.bin", b"q" * 748)]),
    ("t", None, None, [], [("application", "pdf", "日本語の請求書.pdf", b"%PDF")]),
    ("t", None, None, [], [("application", "pdf", "Invoice (March) #3.pdf", b"%PDF")]),
    ("--===============0000000000000000000==\n", None, None, [], [("a", "b", "c", b"d")]),
]


@pytest.mark.parametrize("case", CORPUS, ids=[str(i) for i in range(len(CORPUS))])
def test_corpus_is_covered_and_identical(case):
    fast, reference = both(*case, seed=7)
    assert fast is not None, "a common shape must not fall back"
    assert fast == reference
    msg = email.message_from_bytes(b"From: a@x.test\r\n" + fast, policy=email.policy.default)
    assert msg.defects == [] and msg["MIME-Version"] == "1.0"


@pytest.mark.parametrize("tail", ["", "--", "\r\n", "\n", "x"])
def test_a_drawn_boundary_found_in_the_parts_is_suffixed_as_the_email_package_does(tail):
    seed = 11
    random.seed(seed)
    boundary = "=" * 15 + f"{random.randrange(sys.maxsize):019d}" + "=="
    for text in (f"x\r\n--{boundary}{tail}".encode(), f"--{boundary}\n--{boundary}.0{tail}\r\n".encode(), b"plain"):
        random.seed(seed)
        ours = mime_body._boundary(text)
        random.seed(seed)
        assert ours == BytesGenerator._make_boundary(text)


def test_long_lines_and_odd_names_fall_back_to_the_email_package():
    assert mime_body.build("x" * 999, None, None, [], []) is None
    assert mime_body.build("t", None, None, [], [("application", "pdf", 'q"uote.pdf', b"")]) is None
    assert mime_body.build("t", None, None, [], [("multipart", "mixed", "m", b"")]) is None
    assert mime_body.build("t", None, None, [("image", "png", "ünï.png", b"")], []) is None


# Whole sends: compose() with the fast writer and with the email package alone, same seed, same clock.

address_names = st.one_of(st.just(""), st.sampled_from(["Zoë", "Doe, John", "日本 太郎", "a \"q\" b", "x" * 80]),
                          st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x17F,
                                                         exclude_characters='"\\<>,;:@()[]\x7f'), max_size=12))
subjects = st.one_of(st.sampled_from(["Hi", "Grüße %recipient.name%", "word " * 250, "é" * 300, ""]),
                     st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"),
                             max_size=40))
RECIPIENTS = ["ann@y.test", "bob@y.test", "cat@z.test"]


def upload_list(items):
    return [Upload(name, f"{main}/{sub}", data) for main, sub, name, data in items]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(from_name=address_names, to_names=st.lists(address_names, min_size=1, max_size=3), subject=subjects,
       text=optional_body, html=optional_body, attachments=uploads, inlines=uploads,
       cc=st.booleans(), bcc=st.booleans(), batch=st.booleans(), reply_to=st.booleans(),
       custom=st.dictionaries(st.sampled_from(["X-Campaign", "X-Foo", "List-Id"]), subjects, max_size=2),
       tags=st.lists(st.sampled_from(["news", "Weekly", "a-b"]), max_size=3),
       variables=st.dictionaries(st.sampled_from(["user", "n"]), st.one_of(st.text(max_size=8), st.integers()),
                                 max_size=2),
       seed=st.integers(0, 2**32))
def test_compose_writes_the_same_message_either_way(from_name, to_names, subject, text, html, attachments, inlines,
                                                    cc, bcc, batch, reply_to, custom, tags, variables, seed):
    to = [f'"{n}" <{a}>' if n else a for n, a in zip(to_names, RECIPIENTS, strict=False)]
    fields = {"from": [f'"{from_name}" <s@x.test>' if from_name else "s@x.test"], "to": [", ".join(to)],
              "subject": [subject]}
    if text:
        fields["text"] = [text]
    if html or not text:
        fields["html"] = [html or "<p>x</p>"]
    if cc:
        fields["cc"] = ["Cc Person <cc@y.test>"]
    if bcc:
        fields["bcc"] = ["hidden@y.test"]
    if reply_to:
        fields["h:Reply-To"] = ["Répondre <r@x.test>"]
    for name, value in custom.items():
        fields[f"h:{name}"] = [value]
    if tags:
        fields["o:tag"] = tags
    for name, value in variables.items():
        fields[f"v:{name}"] = [json.dumps(value) if isinstance(value, int) else value]
    if batch:
        fields["recipient-variables"] = [json.dumps({a: {"name": f"N{i}é" if i else "n"} for i, a in enumerate(RECIPIENTS)})]

    def run(fast: bool):
        random.seed(seed)
        with mock.patch.object(compose_module, "FAST_BODY", fast), \
                mock.patch.object(compose_module, "_date_now", return_value="Fri, 02 Jan 2026 00:00:00 +0000"), \
                mock.patch.object(compose_module.ids, "message_id", return_value="20260102.abc@x.test"), \
                mock.patch.object(compose_module.ids, "token", return_value="tok123"):
            try:
                draft = compose("x.test", fields, upload_list(attachments), upload_list(inlines))
            except (InvalidMessage, MessageTooLarge, ValueError) as ex:
                return type(ex), str(ex)
            return [(c.recipients, c.mime, c.headers) for c in draft.copies]

    assert run(True) == run(False)
