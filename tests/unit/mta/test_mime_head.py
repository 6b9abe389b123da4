"""The header-block reader (envoi.mta.mime_head) makes exactly the email package's Message.

compose.parse_head reads a block by mime_head where it can and by email's HeaderParser otherwise
(FAST_HEAD off: the parser alone). Compared, both ways and for ASCII (/messages.mime) and UTF-8
(SMTP) reading: the parsed fields over generated header blocks (names good and bad, separators,
folds, bare CR/LF, non-ASCII and undecodable bytes), whole from_mime drafts over generated messages,
and a fixed corpus. A block the fast reader does not cover must fall back, never differ; what mail
software writes must be covered.
"""

from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envoi.mta import compose as compose_module
from envoi.mta import mime_head
from envoi.mta.compose import from_mime, parse_head
from envoi.mta.errors import IntakeError, InvalidMessage

NAMES = [b"From", b"To", b"Subject", b"Message-ID", b"Date", b"Content-Type", b"X-A", b"x-mailgun-tag", b"",
         b"From ", b"Bad Name", b"\xc3\xa9", b"\xff", b"a\x7fb", b"Received", b"DKIM-Signature", b"a:b", b" lead"]
SEPARATORS = [b":", b": ", b":\t", b" :", b":  \t ", b""]
VALUE_PIECES = [b"", b" ", b"\t", b"x", b"a@x.test", b"<m@x.test>", b"Bench <b@x.test>", b"=?utf-8?q?caf=C3=A9?=",
                b"\xc3\xa9", b"\xe6\x97\xa5", b"\xff", b"\r", b"\n", b"\r\n", b"\r\n ", b"\r\n\t", b"\r\n  y",
                b"multipart/mixed; boundary=\"b\"", b";", b":", b"\x00", b"From x"]
value = st.lists(st.sampled_from(VALUE_PIECES), max_size=6).map(b"".join)
line = st.one_of(
    st.tuples(st.sampled_from(NAMES), st.sampled_from(SEPARATORS), value).map(b"".join),
    st.sampled_from([b" continued", b"\tcontinued", b" ", b"From sender@x.test Mon Jan  1 00:00:00 2026",
                     b"no colon here"]),
    st.binary(max_size=12),
)
blocks = st.lists(line, min_size=1, max_size=8).map(lambda lines: b"\r\n".join(lines) + b"\r\n")


def reading(msg) -> tuple:
    """Everything of a parsed head that Envoi (or anyone) can read from it."""
    # items() is raw_items() through the policy (a Header where there are undecodable bytes, which
    # str() cannot always render): the raw pairs and the types of what items() makes of them.
    def derived(read):
        try:
            return read()
        except UnicodeError as ex:  # str() of a Header with UTF-8 and undecodable bytes mixed
            return type(ex)

    return (list(msg.raw_items()), [type(v).__name__ for _, v in msg.items()], msg._payload, msg.get_unixfrom(),
            derived(msg.get_content_type), derived(lambda: str(msg.get_param("boundary"))))


def both(mime: bytes, utf8: bool):
    """(fast, email package) readings of mime's head; an error in place of a reading when one raised."""
    out = []
    for fast in (True, False):
        with mock.patch.object(compose_module, "FAST_HEAD", fast):
            try:
                out.append(reading(parse_head(mime, utf8)))
            except InvalidMessage as ex:
                out.append(("error", str(ex)))
    return out


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(head=blocks, utf8=st.booleans())
def test_the_fast_reader_gives_the_parsers_message(head, utf8):
    fast, reference = both(head + b"\r\nbody\r\n", utf8)
    assert fast == reference


GOOD_NAMES = [n for n in NAMES if n and all(33 <= c <= 126 and c != 58 for c in n)]
good_value = st.lists(st.sampled_from([p for p in VALUE_PIECES if p not in (b"\r", b"\n", b"\r\n")]),
                      max_size=6).map(b"".join)
good_blocks = st.lists(st.tuples(st.sampled_from(GOOD_NAMES), st.sampled_from([b":", b": ", b":\t", b":  \t "]),
                                 good_value).map(b"".join), min_size=1, max_size=8).map(lambda ls: b"\r\n".join(ls) + b"\r\n")


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(head=good_blocks, utf8=st.booleans())
def test_blocks_of_fields_only_are_covered_and_identical(head, utf8):
    assert mime_head.parse(head.decode("utf-8" if utf8 else "ascii", "surrogateescape")) is not None
    fast, reference = both(head + b"\r\nbody\r\n", utf8)
    assert fast == reference


CORPUS = [
    b"From: Bench <bench@x.test>\r\nTo: <r@y.test>\r\nSubject: Bench message 1\r\nMessage-ID: <a.1@x.test>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nList-Unsubscribe: <https://x.test/u/1>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nDate: Mon, 07 Dec 2026 07:00:00 -0000\r\n",
    b"Received: from client by mx.test (Envoi) with ESMTPSA;\r\n\tMon, 07 Dec 2026 07:00:00 +0000\r\n"
    b"From: a@x.test\r\n",
    b"From: a@x.test\r\nSubject: folded\r\n across\r\n\tthree lines\r\n",
    b"From:a@x.test\r\nSubject:\r\nX-Empty:   \r\nX-Fold-First:\r\n second\r\n",
    b"From: =?utf-8?q?Zo=C3=AB?= <z@x.test>\r\nContent-Type: multipart/alternative;\r\n boundary=\"==b==\"\r\n",
    "From: Zoë <zoë@x.test>\r\nSubject: 日本語\r\n".encode(),
    b"DKIM-Signature: v=1; a=rsa-sha256; d=x.test; s=s1;\r\n\th=from:to; b=abc\r\n def\r\nFrom: a@x.test\r\n",
]


@pytest.mark.parametrize("head", CORPUS, ids=[str(i) for i in range(len(CORPUS))])
@pytest.mark.parametrize("utf8", [True, False], ids=["utf8", "ascii"])
def test_what_mail_software_writes_is_covered_and_identical(head, utf8):
    if utf8 or head.isascii():
        assert mime_head.parse(head.decode("utf-8" if utf8 else "ascii", "surrogateescape")) is not None
    fast, reference = both(head + b"\r\nbody\r\n", utf8)
    assert fast == reference


@pytest.mark.parametrize("head", [
    b" first line is a continuation\r\nFrom: a@x.test\r\n",
    b"From sender@x.test Mon Jan  1 00:00:00 2026\r\nFrom: a@x.test\r\n",  # an mbox envelope line
    b"From: a@x.test\r\nno colon\r\nTo: b@y.test\r\n",  # the parser ends the block here (a defect)
    b"From: a@x.test\r\nSubject : spaced name\r\n",
    b"From: a@x.test\r\n: no name\r\n",
    b"From: a@x.test\r\nX-\xc3\xa9: non-ASCII name\r\n",
    b"From: a@x.test\r\nSubject: bare\rCR\r\n",
    b"From: a@x.test\r\nSubject: bare\nLF\r\n",
])
def test_what_the_parser_reads_its_own_way_falls_back(head):
    assert mime_head.parse(head.decode("utf-8", "surrogateescape")) is None
    for utf8 in (True, False):
        fast, reference = both(head + b"\r\nbody\r\n", utf8)
        assert fast == reference


# Whole drafts: from_mime with each reader, as /messages.mime (ASCII) and as SMTP (UTF-8, CRLF checked).

header_values = st.one_of(st.sampled_from(["Bench <b@x.test>", "a@x.test, c@x.test", "=?utf-8?q?Zo=C3=AB?= <z@x.test>",
                                           "Zoë <z@x.test>", '"q, r" <q@x.test>', "", "<m.1@x.test>", "no-at",
                                           "multipart/mixed; boundary=\"b\"", "Mon, 07 Dec 2026 07:00:00 +0000"]),
                          st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x17F, exclude_characters="\x7f"),
                                  max_size=20))
fields = st.lists(st.tuples(st.sampled_from(["From", "from", "To", "Subject", "Message-ID", "Message-Id", "Date",
                                             "Content-Type", "X-Other", "Cc"]),
                            st.sampled_from([": ", ":", ":\t"]), header_values,
                            st.sampled_from(["", "\r\n folded", "\r\n\t(comment)"])), max_size=7)
BODIES = [b"text\r\n", b"--b\r\nContent-Disposition: attachment; filename=\"a.txt\"\r\n\r\nabc\r\n--b--\r\n", b""]


def draft_reading(mime: bytes, smtp: bool, fast: bool):
    with mock.patch.object(compose_module, "FAST_HEAD", fast), \
            mock.patch.object(compose_module, "_date_now", return_value="Fri, 02 Jan 2026 00:00:00 +0000"), \
            mock.patch.object(compose_module.ids, "message_id", return_value="20260102.abc@x.test"):
        try:
            if smtp:
                draft = from_mime("x.test", mime, ["r@y.test"], {}, method="smtp", head=parse_head(mime, utf8=True),
                                  crlf=True)
            else:
                draft = from_mime("x.test", mime, ["r@y.test"], {}, method="http")
        except IntakeError as ex:
            return type(ex), str(ex)
    return (draft.mail_from, draft.message_id, draft.from_addresses, draft.attachments,
            [(c.recipients, c.mime, c.headers) for c in draft.copies])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(head=fields, body=st.sampled_from(BODIES), smtp=st.booleans())
def test_from_mime_makes_the_same_draft_either_way(head, body, smtp):
    mime = "".join(f"{n}{sep}{v}{fold}\r\n" for n, sep, v, fold in head).encode() + b"\r\n" + body
    assert draft_reading(mime, smtp, True) == draft_reading(mime, smtp, False)


@pytest.mark.parametrize("head", CORPUS, ids=[str(i) for i in range(len(CORPUS))])
def test_drafts_of_the_corpus_are_the_same_either_way(head):
    for body in BODIES:
        for smtp in (True, False):
            assert draft_reading(head + b"\r\n" + body, smtp, True) == draft_reading(head + b"\r\n" + body, smtp, False)


def test_a_message_id_of_bytes_that_are_not_text_is_refused_not_a_server_error():
    mime = b"From: a@x.test\r\nMessage-ID: <\xff@x.test>\r\n\r\nbody\r\n"
    for smtp in (True, False):
        for fast in (True, False):
            assert draft_reading(mime, smtp, fast)[0] is InvalidMessage

