"""A batch send's accepted events are filled in from the first one's JSON (events.ItemSeries): each must be
the very item, and the very JSON, item() and the compact encoder make for that copy."""

from __future__ import annotations

import random

from envoi.events.service import ItemSeries, _compact_json, item
from envoi.mta import intake

_ODD = ["", "é", "日本", "\"", "\\", "\n", "\x00", "\u2028", "%recipient%", "\ud83d\ude00", "</script>", "envoi-slot-1"]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(["a", "B", "@", ".", " ", *_ODD]) for _ in range(rng.choice([0, 1, 5, 30])))


def _accepted(message: dict, rcpt: str, to, size: int, key: str, event_id: str, ts: float, scheduled) -> dict:
    shown = {**message, "headers": {**message["headers"], "to": to}, "size": size}
    if scheduled is not None:
        shown["scheduled-for"] = scheduled
    data = item("accepted", message=shown, recipient=rcpt, ts=ts, method="http",
                envelope={"sender": "from@example.com", "targets": rcpt, "transport": "smtp"},
                storage={"url": f"https://api.example/v3/domains/x/messages/{key}", "key": key, "region": "eu"})
    data["id"] = event_id
    return data


def test_filled_items_are_what_item_and_the_encoder_make():
    rng = random.Random(97)
    for _ in range(300):
        message = {"headers": {"from": _text(rng), "subject": _text(rng), "message-id": _text(rng), "to": "x"},
                   "tags": [_text(rng) for _ in range(rng.choice([0, 1, 3]))],
                   "user_variables": rng.choice([{}, {"a": _text(rng), "n": [1, 2.5, None, True]}]),
                   "options": rng.choice([{}, {"testmode": True}, {"template": {"name": "t", "version": "v"}}]),
                   "attachments": rng.choice([[], [{"filename": _text(rng), "size": 3}]])}
        ts, scheduled = rng.choice([1796687239.5742385, 1.0, 1e9]), rng.choice([None, 1796687300])
        sample = _accepted(message, "first@example.com", "First <first@example.com>", 100, "k0", "id0", ts, scheduled)
        try:
            series = ItemSeries(sample, intake._ACCEPTED_VARYING)
        except ValueError:  # a value of its own reads as the series' marker: intake then calls item() per copy
            assert "\\u0000envoi-slot-" in _compact_json(sample)
            continue
        for _ in range(5):
            rcpt, to, key, event_id = _text(rng), rng.choice([_text(rng), None]), _text(rng), _text(rng)
            size = rng.choice([0, 7, 10**9])
            expected = _accepted(message, rcpt, to, size, key, event_id, ts, scheduled)
            data, text = series.make((event_id, to, size, rcpt, rcpt.rpartition("@")[2], rcpt,
                                      f"https://api.example/v3/domains/x/messages/{key}", key))
            assert data == expected
            assert text == _compact_json(expected)
            assert list(data) == list(expected) and list(data["message"]) == list(expected["message"])
        assert sample["id"] == "id0" and sample["recipient"] == "first@example.com"  # the sample is left as it was
