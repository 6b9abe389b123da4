"""MTA-STS record and policy parsing, MX matching (RFC 8461 3.1, 3.2, 4.1)."""

from __future__ import annotations

import pytest

from envoi.mta.delivery.sts_policy import MAX_AGE_LIMIT, Mode, PolicyError, parse, record_id
from envoi.mta.delivery.tls_report import verify_result_type

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n"


@pytest.mark.parametrize(("texts", "expected"), [
    (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
    (["v=STSv1;id=abc"], "abc"),
    (["v=spf1 -all", "v=STSv1; id=abc; ext=1"], "abc"),
    ([], None),
    (["v=STSv1; id=a", "v=STSv1; id=b"], None),  # several records: no policy (3.1)
    (["v=STSv1; id=bad-id"], None),  # id is 1*32 alphanumerics
    (["v=STSv1; id=" + "a" * 33], None),
    (["v=STSv1;"], None),
    (["v=STSv2; id=abc"], None),
    (["id=abc; v=STSv1"], None),  # v must come first
])
def test_record_id(texts, expected):
    assert record_id(texts) == expected


def test_parse_policy():
    policy = parse(POLICY)
    assert policy.mode is Mode.ENFORCE and policy.max_age == 604800
    assert policy.mx == ("mail.example.com", "*.example.net")
    assert policy.lines() == ["version: STSv1", "mode: enforce", "mx: mail.example.com", "mx: *.example.net",
                              "max_age: 604800"]


def test_parse_accepts_lf_unknown_keys_and_caps_max_age():
    policy = parse("version: STSv1\nmode: testing\nmx: MX.Example.COM.\nfuture: x\nmax_age: 9999999999\n")
    assert policy.mode is Mode.TESTING and policy.mx == ("mx.example.com",) and policy.max_age == MAX_AGE_LIMIT


def test_mode_none_needs_no_mx():
    assert parse("version: STSv1\nmode: none\nmax_age: 86400\n").mode is Mode.NONE


@pytest.mark.parametrize("text", [
    "mode: enforce\nmx: a.example\nmax_age: 1\n",  # no version
    "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n",
    "version: STSv1\nmode: enforce\nmax_age: 1\n",  # no mx
    "version: STSv1\nmode: enforce\nmx: a.example\n",  # no max_age
    "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
    "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n",
    "version: STSv1\nmode: enforce\nmx: bad host\nmax_age: 1\n",
    "version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n",
    "version: STSv1\nmode: enforce\nmx: localhost\nmax_age: 1\n",
    "<html>not a policy</html>",
])
def test_invalid_policies(text):
    with pytest.raises(PolicyError):
        parse(text)


@pytest.mark.parametrize(("host", "allowed"), [
    ("mail.example.com", True),
    ("MAIL.example.com.", True),
    ("mx1.example.net", True),  # the wildcard stands for one label
    ("a.b.example.net", False),  # ... not two
    ("example.net", False),  # ... nor none
    ("mail.example.com.evil.test", False),
    ("evilmail.example.com", False),
])
def test_mx_matching(host, allowed):
    assert parse(POLICY).matches(host) is allowed


def test_verification_codes_map_to_rfc8460_result_types():
    assert verify_result_type(62) == "certificate-host-mismatch"
    assert verify_result_type(10) == "certificate-expired"
    assert verify_result_type(20) == "certificate-not-trusted"
    assert verify_result_type(None) == "validation-failure"
