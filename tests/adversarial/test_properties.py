"""Property-based tests (hypothesis) of the parsers that take outside input.

Each property holds for any input: a parser answers or raises its own error type, never anything
else. Examples are bounded (EXAMPLES each) and derandomized, so the run is quick and repeatable;
bench/fuzz_parsers.py runs the same targets coverage-guided for longer.
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import json
import time
from urllib.parse import quote, urlencode

import pytest
from falcon import testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from envoi.api.app import create_app
from envoi.events import filters
from envoi.mta import compose as compose_mod
from envoi.mta.bounces import arf, dsn, mime
from envoi.mta.errors import IntakeError, InvalidMessage, InvalidRecipient
from tests.conftest import basic

pytestmark = pytest.mark.fuzz
EXAMPLES = 300
bounded = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# strategies ---------------------------------------------------------------------------------------
NASTY = "\r\n\x00\t \"'<>()[]:;,@\\%=?_.-\u00e9\u00fc\u4e2d\u0301\u200b\ufeff\u2028\x85\x7f"
INJECTIONS = ["\r\nBcc: evil@x.test", "\nBcc: evil@x.test", "\rBcc: evil@x.test", "\r\n\r\nbody", "\r\n X: folded",
              "=?utf-8?q?a=0D=0ABcc:_e@x.test?=", "%recipient.x%"]
nasty_text = st.lists(st.one_of(st.sampled_from(INJECTIONS), st.sampled_from(NASTY), st.characters()),
                      max_size=20).map("".join)
label = st.text(alphabet="abcxyz019-\u00fc\u00e9\u4e2d\u0431", min_size=1, max_size=12)
address_like = st.one_of(
    st.emails(),
    st.builds(lambda local, labels: f"{local}@{'.'.join(labels)}",
              st.text(alphabet="abcXYZ09.+_-!#'\"\u00e9\u00fc\u4e2d \\", min_size=0, max_size=20),
              st.lists(label, min_size=1, max_size=4)),
    nasty_text,
)


def header_names(raw: bytes) -> list[str]:
    """The field names of the top-level header block, folded lines joined."""
    head, sep, _ = raw.partition(b"\r\n\r\n")
    assert sep, "no header/body separator"
    names = []
    for line in head.split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line, f"bare CR or LF in the header block: {line!r}"
        if line[:1] in (b" ", b"\t"):
            continue  # a folded continuation of the previous field
        name, colon, _ = line.partition(b":")
        assert colon, f"a header line that is not a field: {line!r}"
        names.append(name.decode("ascii").lower())
    return names


BUILT = {"from", "to", "cc", "subject", "date", "message-id", "x-mailgun-tag", "x-mailgun-variables",
         "mime-version", "content-type", "content-transfer-encoding", "x-custom"}


def _check_composed(draft, extra: str = "") -> None:
    for copy in draft.copies:
        names = header_names(copy.mime)
        if extra and extra not in BUILT:
            assert names.count(extra) <= 1
            names = [n for n in names if n != extra]
        assert set(names) <= BUILT, f"unexpected header(s): {set(names) - BUILT}"
        for once in ("from", "to", "subject", "message-id", "date", "mime-version", "content-type"):
            assert names.count(once) == 1, (once, names)
        email.message_from_bytes(copy.mime, policy=email.policy.SMTP)  # parses back


# address parsing ----------------------------------------------------------------------------------
@bounded
@given(address_like)
def test_normalize_address_raises_only_invalid_recipient_and_is_idempotent(addr):
    try:
        out = compose_mod.normalize_address(addr)
    except InvalidRecipient:
        return
    assert compose_mod.normalize_address(out) == out
    assert not any(c in out for c in "\r\n\x00 "), repr(out)
    assert out.count("@") >= 1


@bounded
@given(st.lists(address_like, max_size=3))
def test_parse_addresses_raises_only_intake_errors(values):
    try:
        pairs = compose_mod.parse_addresses("to", values)
    except (InvalidMessage, InvalidRecipient):
        return
    for _, addr in pairs:
        assert compose_mod.normalize_address(addr) == addr


# MIME composition ---------------------------------------------------------------------------------
@bounded
@given(subject=nasty_text, name=nasty_text, custom=nasty_text, var=nasty_text, tag=nasty_text,
       text=nasty_text, header=st.text(alphabet=st.characters(max_codepoint=0x7f), min_size=1, max_size=12))
def test_compose_never_injects_a_header(subject, name, custom, var, tag, text, header):
    fields = {"from": [f"{name} <sender@example.test>"], "to": ["a@one.test", f"{name} <b@two.test>"],
              "subject": [subject], "text": [text or "x"], "h:X-Custom": [custom], "v:var": [var],
              "o:tag": [tag], f"h:{header}": [custom]}
    try:
        draft = compose_mod.compose("example.test", fields, [], [])
    except IntakeError:
        return
    # a valid h: name we asked for is one more header, present at most once
    _check_composed(draft, extra=header.lower())


@bounded
@example(value="v\r\nBcc: evil@x.test", subject="s")
@given(value=nasty_text, subject=nasty_text)
def test_compose_recipient_variables_never_inject_a_header(value, subject):
    rv = json.dumps({"a@one.test": {"x": value}, "b@two.test": {"x": value}})
    fields = {"from": ["sender@example.test"], "to": ["a@one.test", "b@two.test"], "subject": [subject + " %recipient.x%"],
              "text": ["hi %recipient.x%"], "h:X-Custom": ["%recipient.x%"], "recipient-variables": [rv]}
    try:
        draft = compose_mod.compose("example.test", fields, [], [])
    except IntakeError:
        return
    _check_composed(draft)


@bounded
@given(st.binary(max_size=400), st.lists(address_like, max_size=2))
def test_from_mime_raises_only_intake_errors(raw, recipients):
    with contextlib.suppress(IntakeError):
        compose_mod.from_mime("example.test", raw, recipients, {}, method="http")


# events filter parser ------------------------------------------------------------------------------
EVENT = {"event": "delivered", "severity": "", "recipient": "a@b.test", "tags": ["t1"],
         "message": {"headers": {"from": "S <s@x.test>", "subject": "Hello world", "message-id": "m@x"}, "size": 12}}
filter_text = st.one_of(nasty_text, st.lists(st.sampled_from(
    ["AND", "OR", "NOT", "(", ")", '"', "a", ">3", "<=7", "=1", "\\", '"x y"', " ", "delivered", "99999999999999999"]),
    max_size=25).map(" ".join))


@bounded
@given(name=st.one_of(st.sampled_from(sorted(filters.FIELDS)), nasty_text), text=filter_text)
def test_filter_parser_raises_only_filter_error(name, text):
    try:
        node = filters.parse(name, text)
    except filters.FilterError:
        return
    sql, args = filters.to_sql(name, node)
    assert sql.count("%s") == len(args)
    assert isinstance(filters.matches(name, node, EVENT), bool)


# paging tokens over HTTP ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def http(settings, services):
    account = services.accounts.create_account("paging-props")
    domain = services.accounts.add_domain(account["id"], "paging.example.test", dkim_key_size=1024)
    _, key = services.accounts.create_key(account["id"], "admin")
    return testing.TestClient(create_app(settings, services)), domain["name"], basic(key)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | nasty_text,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(nasty_text, inner, max_size=3),
                           max_leaves=8)
event_token = st.one_of(
    nasty_text.filter(bool),
    json_values.map(lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).decode().rstrip("=")),
    st.fixed_dictionaries({"q": json_values, "c": json_values, "p": json_values, "i": json_values}).map(
        lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).decode().rstrip("=")),
)


@bounded
@given(token=event_token)
def test_events_page_token_is_400_never_500(http, token):
    client, domain, headers = http
    resp = client.simulate_get(f"/v3/{domain}/events/{quote(token, safe='')}", headers=headers)
    assert resp.status_code in (200, 400, 404), (resp.status_code, resp.text)
    if resp.status_code != 200:
        assert set(resp.json) == {"message"}


@bounded
@example(page="next", address="a\x00b", limit="10")
@example(page="", address="\ud800", limit="")  # a lone surrogate reaches the server as %ED%A0%80 (CI found it)
@given(page=st.one_of(st.sampled_from(["first", "next", "previous", "last"]), nasty_text),
       address=nasty_text, limit=st.one_of(st.integers(-5, 2000).map(str), nasty_text))
def test_suppressions_page_params_are_400_never_500(http, page, address, limit):
    client, domain, headers = http
    for kind in ("bounces", "unsubscribes", "complaints", "whitelists"):
        query = urlencode({"page": page, "address": address, "limit": limit}, encoding="utf-8", errors="surrogatepass")
        resp = client.simulate_get(f"/v3/{domain}/{kind}", query_string=query, headers=headers)
        assert resp.status_code in (200, 400), (kind, resp.status_code, resp.text)


@bounded
@given(page=st.one_of(st.sampled_from(["first", "next", "previous", "last"]), nasty_text),
       address=nasty_text.filter(lambda s: "\x00" not in s), limit=st.one_of(st.integers(-5, 2000).map(str), nasty_text))
def test_suppressions_page_params_without_nul_are_400_never_500(http, page, address, limit):
    client, domain, headers = http
    query = urlencode({"page": page, "address": address, "limit": limit}, encoding="utf-8", errors="surrogatepass")
    resp = client.simulate_get(f"/v3/{domain}/bounces", query_string=query, headers=headers)
    assert resp.status_code in (200, 400), (resp.status_code, resp.text)


# DSN / ARF ------------------------------------------------------------------------------------------
report_fields = st.lists(st.tuples(st.sampled_from(
    ["Final-Recipient", "Original-Recipient", "Action", "Status", "Diagnostic-Code", "Remote-MTA", "Reporting-MTA",
     "Arrival-Date", "Feedback-Type", "User-Agent", "Version", "Original-Mail-From", "Original-Rcpt-To", "Source-IP",
     "Reported-Domain", "X-" + "y" * 3]), nasty_text), max_size=8)


@st.composite
def reports(draw) -> bytes:
    """Something shaped like a multipart/report, with every piece open to garbage."""
    boundary = draw(st.sampled_from(["b1", "", "=_x", "b1\"", "a" * 80]))
    report_type = draw(st.sampled_from(["delivery-status", "feedback-report", "", "x"]))
    inner = draw(st.sampled_from(["message/delivery-status", "message/feedback-report", "text/plain",
                                  "message/rfc822", "text/rfc822-headers", "message/global-delivery-status"]))
    charset = draw(st.sampled_from(["utf-8", "us-ascii", "x-unknown", "utf-16", ""]))
    cte = draw(st.sampled_from(["7bit", "base64", "quoted-printable", "8bit", "x-uue"]))
    blocks = "\r\n\r\n".join("\r\n".join(f"{k}: {v}" for k, v in fields) for fields in draw(st.lists(report_fields, max_size=3)))
    tail = draw(st.binary(max_size=80))
    text = (f"From: MAILER-DAEMON <m@x.test>\r\nSubject: {draw(nasty_text)}\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: multipart/report; report-type={report_type}; boundary=\"{boundary}\"\r\n\r\n"
            f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n{draw(nasty_text)} 550 5.1.1 <u@x.test>\r\n"
            f"--{boundary}\r\nContent-Type: {inner}; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
            f"{blocks}\r\n--{boundary}--\r\n")
    return text.encode("utf-8", "surrogatepass") + tail


bounce_input = st.one_of(st.binary(max_size=600), reports())


def _strings_bounded(obj) -> None:
    for value in vars(obj).values():
        if isinstance(value, str):
            assert len(value) <= 2000
        elif isinstance(value, list):
            assert len(value) <= mime.MAX_FIELD_BLOCKS
            for item in value:
                if hasattr(item, "__dict__"):
                    _strings_bounded(item)


@bounded
@given(bounce_input)
def test_dsn_parser_never_raises(raw):
    started = time.monotonic()
    message = mime.parse_message(raw)
    if message is not None:
        result = dsn._parse(message)  # the inner parser: parse() would hide a bug behind its except
        _strings_bounded(result)
    assert isinstance(dsn.parse(raw), dsn.Dsn)
    assert time.monotonic() - started < 2


@bounded
@given(bounce_input)
def test_arf_parser_never_raises(raw):
    started = time.monotonic()
    message = mime.parse_message(raw)
    if message is not None:
        _strings_bounded(arf._parse(message))
    assert isinstance(arf.parse(raw), arf.Arf)
    assert time.monotonic() - started < 2


def test_nul_in_an_events_filter_is_a_400_not_a_500(http):
    """Found by schemathesis: the NUL reached Postgres as a text parameter (DataError, a 500)."""
    client, domain, headers = http
    resp = client.simulate_get(f"/v3/{domain}/events", query_string="subject=a%00b", headers=headers)
    assert resp.status_code == 400 and "NUL" in resp.json["message"], resp.text
