"""is_clean and check_text refuse NUL and lone surrogates whether the rest of the text is ASCII or not
(ASCII text takes a shortcut), and accept everything else."""

import pytest

from envoi.api.params import is_clean
from envoi.mta.errors import InvalidMessage
from envoi.mta.jsonvalues import check_text

BAD = ["\x00", "a\x00b", "x" * 5000 + "\x00", "é\x00", "\ud800", "abc\udfff", "€\ud83d", "x" * 5000 + "\udc00"]
GOOD = ["", "plain ASCII\r\n", "x" * 5000, "é", "€ and 😀", "\x01\x7f\x80\uffff", "\U0010ffff"]


@pytest.mark.parametrize("value", BAD)
def test_refused(value):
    assert not is_clean(value)
    with pytest.raises(InvalidMessage):
        check_text(value, "text")


@pytest.mark.parametrize("value", GOOD)
def test_accepted(value):
    assert is_clean(value)
    assert check_text(value, "text") == value
