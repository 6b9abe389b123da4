"""The DATA line-length check (listener.has_line_over) against measuring every line."""

from __future__ import annotations

import random

import pytest

from envoi.mta.listener import has_line_over


def _measured(body: bytes, limit: int) -> bool:
    return bool(body) and max(map(len, body.split(b"\r\n"))) > limit


@pytest.mark.parametrize("limit", [998, 10, 1, 0])
def test_agrees_with_measuring_every_line(limit):
    rng = random.Random(limit)
    pieces = [b"\r\n", b"\r", b"\n", b"a", b"xyz", b"."]
    for _ in range(3000):
        length = rng.choice([0, 1, 5, 40, 997, 998, 999, 1000, 1500, 3000])
        lines = []
        while sum(map(len, lines)) < length * 3:
            size = max(0, int(rng.gauss(length, length / 3 + 1)))
            lines.append(b"".join(rng.choice(pieces[1:]) if rng.random() < 0.02 else b"a" for _ in range(size)))
        body = b"\r\n".join(lines)
        if rng.random() < 0.3:
            body += rng.choice(pieces)
        assert has_line_over(body, limit) == _measured(body, limit), (limit, body)


def test_the_boundaries():
    for size in (997, 998, 999, 1000, 1997, 1998, 1999):
        for before in (0, 1, 499, 500, 501):
            body = b"a\r\n" * (before // 3) + b"x" * size + b"\r\nend"
            assert has_line_over(body, 998) == (size > 998)
    assert not has_line_over(b"", 998)
    assert has_line_over(b"x" * 999, 998) and not has_line_over(b"x" * 998, 998)
