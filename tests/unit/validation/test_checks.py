"""The offline checks of address validation: role mailboxes, disposable domains, typo suggestions, and
the CSV upload parser's limits."""

from __future__ import annotations

import gzip

import pytest

from envoi.validation import checks
from envoi.validation.errors import FileInvalid
from envoi.validation.service import parse_upload


@pytest.mark.parametrize(("local", "role"), [("postmaster", True), ("Admin", True), ("info+news", True),
                                             ("no-reply", True), ("jane", False), ("administrators", False)])
def test_role_local_parts(local, role):
    assert checks.is_role(local) is role


def test_disposable_domains_and_their_subdomains():
    assert checks.is_disposable("mailinator.com")
    assert checks.is_disposable("eu.mailinator.com")
    assert not checks.is_disposable("gmail.com")
    assert not checks.is_disposable("com")  # a bare TLD is never matched


@pytest.mark.parametrize(("domain", "suggestion"), [
    ("gmial.com", "gmail.com"), ("gmail.con", "gmail.com"), ("gmai.com", "gmail.com"), ("hotmial.com", "hotmail.com"),
    ("yahooo.com", "yahoo.com"), ("outlok.com", "outlook.com"),
    ("gmail.com", None), ("gmx.de", None), ("example.com", None), ("good.test", None), ("me.com", None),
])
def test_did_you_mean_for_popular_domains(domain, suggestion):
    assert checks.suggest_domain(domain) == suggestion


def test_upload_parsing():
    assert parse_upload(b"\xef\xbb\xbfName,Email\nA,a@x.test\nB,\n,c@x.test\n") == ["a@x.test", "c@x.test"]
    assert parse_upload(gzip.compress(b"email_address\r\nq@x.test\r\n")) == ["q@x.test"]
    with pytest.raises(FileInvalid, match="25 MB"):
        parse_upload(b"email\n" + b"a@x.test\n" * (3 * 1024 * 1024))
    with pytest.raises(FileInvalid, match="25 MB"):  # a gzip bomb stops at the limit
        parse_upload(gzip.compress(b"email\n" + b"a" * (26 * 1024 * 1024)))
    with pytest.raises(FileInvalid, match="gzip"):
        parse_upload(b"\x1f\x8bnot gzip at all")
