"""Callers' JSON (v: values, recipient-variables, X-Mailgun-*Variables): parsed so that it can be stored.

Python's json accepts what Postgres's jsonb refuses (NaN and Infinity, the escapes \\u0000 and lone
surrogates such as \\ud800) and raises RecursionError on deep nesting; any of these would fail the
whole accept with a 500 (HTTP) or a temporary failure (SMTP). Here they are refused up front.
"""

from __future__ import annotations

import json
import math
import re

from envoi.mta.errors import InvalidMessage

MAX_DEPTH = 32  # objects/arrays inside each other; Mailgun's templates need a handful
# What Postgres text and jsonb cannot hold: NUL, and UTF-16 surrogates (from \\ud800-style escapes,
# or decoders such as UTF-7), which are not Unicode scalar values and cannot be encoded as UTF-8.
UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999: JSON, but not a number Postgres or anyone else can hold
        raise ValueError(f"{text} is out of range")
    return value


def loads(raw: str, what: str):
    """Parse JSON; ValueError when it is not JSON, InvalidMessage when it is JSON we cannot keep."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError as ex:
        raise InvalidMessage(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)") from ex
    # PERF: the walk is skipped when the text shows it cannot find anything: a bad string needs a \u
    # escape (or a surrogate in the text itself), depth needs that many brackets.
    if "\\u" in raw or not raw.isascii() and UNSTORABLE.search(raw):
        _walk(value, what, 0, check_strings=True)
    elif raw.count("[") + raw.count("{") > MAX_DEPTH:
        _walk(value, what, 0, check_strings=False)
    return value


def load_object(raw: str, what: str, shape: str = "an object") -> dict:
    """loads() for a value that must be a JSON object; InvalidMessage (Mailgun's wording) if not."""
    try:
        value = loads(raw, what)
    except ValueError as ex:
        raise InvalidMessage(f"{what} is not a valid JSON") from ex
    if not isinstance(value, dict):
        raise InvalidMessage(f"{what} is not a valid JSON: it must be {shape}")
    return value


def check_text(value: str, what: str) -> str:
    """Refuse a string Postgres cannot store (NUL, lone surrogates)."""
    # PERF: an ASCII string (isascii() is a flag) holds no surrogate: memchr for NUL, not the regex's scan.
    if ("\x00" in value) if value.isascii() else UNSTORABLE.search(value):
        raise InvalidMessage(_unstorable(what))
    return value


def _unstorable(what: str) -> str:
    return f"{what} contains a NUL character or invalid Unicode (a lone surrogate)"


def _walk(value, what: str, depth: int, check_strings: bool) -> None:
    if isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            raise InvalidMessage(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)")
        if isinstance(value, dict):
            for key, item in value.items():
                if check_strings and UNSTORABLE.search(key):
                    raise InvalidMessage(_unstorable(what))
                _walk(item, what, depth + 1, check_strings)
        else:
            for item in value:
                _walk(item, what, depth + 1, check_strings)
    elif check_strings and isinstance(value, str) and UNSTORABLE.search(value):
        raise InvalidMessage(_unstorable(what))
