"""A batch send's copies filled from one built template are the very bytes building each copy gives
(compose's PERF path), and values that only building handles right still get built copies."""

import json
import re

import pytest

from envoi.mta.compose import Upload, compose
from envoi.mta.errors import InvalidMessage

_VOLATILE = re.compile(rb"^(Date|Message-ID): .*$", re.MULTILINE)
_BOUNDARY = re.compile(rb"===============\d+==")  # random per build


def _norm(mime: bytes) -> bytes:
    return _BOUNDARY.sub(b"BOUNDARY", _VOLATILE.sub(b"", mime))


def _copies(fields: dict, variables: dict, attachments=()) -> dict[str, bytes]:
    fields = dict(fields, **{"recipient-variables": [json.dumps(variables)]})
    draft = compose("x.test", fields, list(attachments), [])
    return {c.recipients[0]: _norm(c.mime) for c in draft.copies}


def _built_one_by_one(fields: dict, variables: dict, attachments=()) -> dict[str, bytes]:
    out = {}
    for addr in variables:
        one = dict(fields, to=[next(t for t in fields["to"][0].split(", ") if addr in t)])
        out.update(_copies(one, {addr: variables[addr]}, attachments))  # one recipient: always built
    return out


VARIABLES = {
    "b@y.test": {"name": "Bea", "id": 1},
    "c@z.test": {"name": "Cy with a much longer name " * 3, "id": {"nested": [1, 2]}},
    "d@w.test": {"name": "Dé"},                       # not ASCII: built
    "e@v.test": {"name": "line\nbreak"},              # a newline in the body; refused in a header
    "f@u.test": {},                                   # no variables: placeholders go empty
    "g@t.test": {"name": "--boundary-like"},
}
FIELDS = {"from": ["Shop <a@x.test>"], "to": [", ".join(f"N{i} <{a}>" for i, a in enumerate(VARIABLES))],
          "text": ["Dear %recipient.name%, order %recipient.id% for %recipient%.\r\n" * 40],
          "o:tag": ["t"], "h:X-Ref": ["ref-%recipient.id%"], "subject": ["Your order"]}


@pytest.mark.parametrize("attach", [False, True])
def test_filled_copies_equal_built_copies(attach):
    attachments = [Upload("a.pdf", "application/pdf", b"%PDF-1.4 " * 40)] if attach else []
    batch = _copies(FIELDS, VARIABLES, attachments)
    assert set(batch) == set(VARIABLES)
    assert batch == _built_one_by_one(FIELDS, VARIABLES, attachments)
    assert b"Dear Bea, order 1 for b@y.test." in batch["b@y.test"]
    assert b"To: N0 <b@y.test>\r\n" in batch["b@y.test"] and b"c@z.test" not in batch["b@y.test"]


def test_a_filled_subject_too_long_or_with_a_newline_is_refused_as_when_built():
    fields = dict(FIELDS, subject=["Hi %recipient.name%"])
    with pytest.raises(InvalidMessage, match="control character"):
        _copies(fields, VARIABLES)
    long = {"b@y.test": {"name": "x"}, "c@z.test": {"name": "y " * 600}}
    with pytest.raises(InvalidMessage, match="subject is too long"):
        _copies(dict(fields, to=["b@y.test, c@z.test"]), long)
