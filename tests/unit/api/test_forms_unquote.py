"""The form reader's percent-decoding decodes exactly as urllib's unquote_to_bytes (its C fast path
included): valid, invalid and truncated escapes, literal '=', '+', backslashes (the fast path's own
escape character), line breaks and trailing blanks; and it never warns."""

import random
from urllib.parse import quote, quote_plus, unquote_to_bytes

import pytest

from envoi.api.forms import _parse_urlencoded, _unquote_bytes


@pytest.mark.filterwarnings("error")  # escape_decode warns of an invalid escape: it must never see one
def test_fast_path_equals_unquote_to_bytes_on_random_bytes():
    rnd = random.Random(20)
    alphabet = b"%=aAfF09zZ \r\n\t_+.~\x00\xff\\xXuU"  # backslashes, x and u: escape_decode's own escapes
    for _ in range(100000):
        raw = bytes(rnd.choice(alphabet) for _ in range(rnd.randint(0, 24)))
        assert _unquote_bytes(raw) == unquote_to_bytes(raw), raw


def test_edge_cases():
    for raw in (b"", b"%", b"%4", b"%41", b"%4g", b"a=b", b"=41", b"=\r\n", b"%0D%0A", b"x %20 \r\n",
                b"%e2%82%ac", b"%E2%82%AC=", b"100%", b"%%41", b"= \n", b"\\", b"\\%41", b"%5C", b"%5c%5C\\x41",
                b"\\\n", b"%\\", b"\\x", b"\\x4", b"\\n\\t\\0", b"\\N{DASH}", b"%5Cx41", b"\\%"):
        assert _unquote_bytes(raw) == unquote_to_bytes(raw), raw


def test_a_form_body_with_a_5kb_text_decodes_to_its_fields():
    text = "Thank you for your order = done. 100% sure €\r\n" * 110
    for quoting in (quote, quote_plus):
        body = f"from=a%40b.test&text={quoting(text, safe='')}&o%3Atag=t+1".encode()
        fields = _parse_urlencoded(body.split(b"&"))
        assert fields == {"from": ["a@b.test"], "text": [text], "o:tag": ["t 1"]}
