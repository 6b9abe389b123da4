"""compose() refuses a draft that cannot fit before building it (issue 11, defect 6)."""

from __future__ import annotations

import io
import json
import time

import pytest

from envoi.mta.compose import Upload, compose
from envoi.mta.errors import MessageTooLarge

LIMIT = 25 * 1024 * 1024


def batch(body: str, n: int) -> dict[str, list[str]]:
    to = [f"r{i}@one.test" for i in range(n)]
    return {"from": ["a@d.test"], "to": to, "subject": ["s"], "text": [body],
            "recipient-variables": [json.dumps({addr: {"name": "x"} for addr in to})]}


def test_300kb_times_1000_recipient_variables_is_refused_before_any_copy_is_built():
    fields = batch("Hello %recipient.name%, " + "x" * 300_000, 1000)
    started = time.perf_counter()
    with pytest.raises(MessageTooLarge, match="exceeds the limit"):
        compose("d.test", fields, [], [], max_bytes=LIMIT)
    assert time.perf_counter() - started < 0.5  # building the copies took seconds and 301 MB


def test_an_attachment_that_cannot_fit_once_encoded_is_refused_unread():
    class Unreadable(io.BytesIO):
        def read(self, *args):
            raise AssertionError("the upload was read")

    big = Upload("big.bin", "application/octet-stream", Unreadable(), 19 * 1024 * 1024)  # base64: 25.3 MB
    with pytest.raises(MessageTooLarge):
        compose("d.test", {"from": ["a@d.test"], "to": ["b@one.test"], "text": ["t"]}, [big], [], max_bytes=LIMIT)


def test_the_estimate_never_refuses_what_fits():
    fields = batch("%recipient.name% " * 10_000, 100)  # 170 KB of placeholders shrink to 20 KB a copy
    draft = compose("d.test", fields, [], [], max_bytes=100 * 30_000)
    assert len(draft.copies) == 100 and draft.size <= 100 * 30_000
    data = b"\x00" * (18 * 1024 * 1024)
    draft = compose("d.test", {"from": ["a@d.test"], "to": ["b@one.test"], "text": ["t"]},
                    [Upload("a.bin", "application/octet-stream", io.BytesIO(data), len(data))], [], max_bytes=LIMIT)
    assert LIMIT - 1024 * 1024 < draft.size <= LIMIT and draft.attachments[0]["size"] == len(data)
