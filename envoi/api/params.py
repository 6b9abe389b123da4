"""Text that reaches a resource is checked once here: no NUL or lone surrogate gets to a parser or Postgres.

Postgres refuses NUL in text and a lone surrogate cannot be encoded as UTF-8, so either would end a
request in a driver error (a 500) wherever it was used. The path and query are checked by InputGuard
before routing; form fields by forms.read_form; JSON bodies with check_json.
"""

from __future__ import annotations

import re

import falcon

from envoi.api.errors import ApiError

_BAD = re.compile("[\x00\ud800-\udfff]")


def is_clean(value: str) -> bool:
    # PERF: an ASCII string (isascii() is a flag) holds no surrogate: memchr for NUL, not the regex's scan.
    if value.isascii():
        return "\x00" not in value
    return _BAD.search(value) is None


def refuse(where: str) -> ApiError:
    return ApiError(400, f"{where} contains a NUL character or an invalid (surrogate) code point")


def check_fields(fields: dict[str, list[str]], where: str = "form field") -> None:
    for name, values in fields.items():
        if not is_clean(name):
            raise refuse(f"{where} name")
        for value in values:
            if not is_clean(value):
                raise refuse(f"{where} '{name}'")


def check_json(value, depth: int = 0) -> None:
    """Every string (key or value) of a decoded JSON document."""
    if depth > 32:
        raise ApiError(400, "JSON body is nested too deeply")
    if isinstance(value, str):
        if not is_clean(value):
            raise refuse("JSON body")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_json(key, depth + 1)
            check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_json(item, depth + 1)


class InputGuard:
    """Middleware: refuse a path or query parameter with NUL or a lone surrogate (400), before routing."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not is_clean(req.path):
            raise refuse("URL path")
        for name, value in req.params.items():
            if not is_clean(name):
                raise refuse("query parameter name")
            for v in value if isinstance(value, list) else (value,):
                if not is_clean(v):
                    raise refuse(f"query parameter '{name}'")
