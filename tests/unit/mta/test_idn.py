"""Addresses on the wire: the relay's A-labels are the ones intake's validation computed."""

from __future__ import annotations

import pytest
from email_validator import validate_email

from envoi.mta import compose, idn

IDN_ADDRESSES = ["user@bücher.example", "user@straße.example", "ü@例子.example", "x@ΑΒΓ.example", "x@ﬁ.example",
                 "x@xn--bcher-kva.example", "x@Bücher.EXAMPLE", "x@مثال.example", "x@ｅｘａｍｐｌｅ.example"]


@pytest.mark.parametrize("given", IDN_ADDRESSES)
def test_a_labels_match_email_validator(given):
    stored = compose.normalize_address(given)  # what the relay gets: U-labels
    expected = validate_email(given, check_deliverability=False, allow_smtputf8=True,
                              test_environment=True).ascii_domain
    wire, needs_smtputf8 = idn.wire_address(stored)
    assert wire.rpartition("@")[2] == expected.lower()
    assert needs_smtputf8 is (not stored.rpartition("@")[0].isascii())


def test_wire_address():
    assert idn.wire_address("plain@example.test") == ("plain@example.test", False)
    assert idn.wire_address("") == ("", False)  # the null sender
    assert idn.wire_address("ü@bücher.test") == ("ü@xn--bcher-kva.test", True)
    assert idn.ascii_domain("Example.TEST") == "Example.TEST"  # ASCII: untouched
    for bad in ("a\r\nRCPT TO:<x@y>@x.test", "a\udcff@x.test", "a@bad\u200b.test"):
        with pytest.raises(idn.AddressError):
            idn.wire_address(bad)
    with pytest.raises(idn.AddressError):
        idn.ascii_domain("bü-.test")
