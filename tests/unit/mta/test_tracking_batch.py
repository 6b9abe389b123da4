"""A batch send's copies rendered from one template of its body (tracking._Batch) are byte for byte the
copies rendered one by one, over generated bodies and values; the template is used where it can be."""

from __future__ import annotations

import json
import random
import secrets
from dataclasses import replace

import pytest

from envoi.mta import tracking
from envoi.mta.compose import Composed, compose

DOMAIN = {"id": 1, "account_id": 1, "name": "bench.example.test", "web_prefix": "email", "web_scheme": "https"}

# Fragments a body is made of: ordinary ones, and at most two placing a placeholder where a value could
# change what rendering finds (beside tags, links, URLs, entities, other placeholders).
HTML = ["<p>Hello %recipient.name%</p>", "<p>%recipient.name%, hi</p>", "<a href=\"https://a.example/x\">go</a>",
        "<a href=\"https://c.example/\">%recipient.name%</a>", "<p>(%recipient.id%)</p>", " %recipient% ",
        "<p>%unsubscribe_url%</p>", "\r\n", "<p>\r\n%recipient.name%\r\n</p>", "<p>é %recipient.name% ü</p>"]
ODD_HTML = ["<a href='https://b.example/%recipient.id%'>b</a>", "<p title=\"%recipient.name%\">t</p>",
            "<a href=\"%recipient.link%\">l</a>", "<a%recipient.name% href=\"https://d.example/\">d</a>",
            "<p>x%recipient.name%y</p>", "&%recipient.name%;", "%unsubscribe%recipient.name%%", "<%recipient.name%",
            "%recipient.name%href=\"https://e.example/\"", "https://f.example/%recipient.name%",
            "<a href=\"h%recipient.name%://g.example/\">g</a>", "<a href=\">%recipient.name%\">h</a>"]
TEXT = ["Hello %recipient.name%, ", "see https://t.example/p ", "(%recipient.id%) ", "\r\n", "%recipient% ",
        "%unsubscribe_url% "]
ODD_TEXT = ["https://u.example/%recipient.id% ", "%recipient.name%://v.example ", "x%recipient.name%y ",
            "https://w.example/x,%recipient.name% ", "%unsubscribe%recipient.name%%"]
VALUES = ["Customer 7", "ann@dest.test", "", "O'Brien", "a<b", "x&y", "José", "https", "https://x.example/",
          "%unsubscribe_url%", "_url", "a\nb", "href", " href", "a b.c,d-e_f+g", "\"q\"", "k" * 40]


def tracker(settings: dict) -> tracking.Tracking:
    class Stub(tracking.Tracking):
        def settings_for(self, domain_id, conn=None):
            return settings

    return Stub(None, None, secrets.token_bytes(32), "http://127.0.0.1:8025", host_mode="domain")


def render(t: tracking.Tracking, draft, monkeypatch) -> list[bytes]:
    count = iter(range(1, 10**9))
    monkeypatch.setattr(tracking.os, "urandom", lambda n: (next(count).to_bytes(4, "big") * n)[:n])
    return [c.mime for c in t.render(DOMAIN, draft).copies]


def one_by_one(draft):
    return replace(draft, copies=[Composed(c.recipients, c.mime, c.headers) for c in draft.copies])


@pytest.mark.parametrize("seed", range(60))
def test_generated_batches_render_as_copy_by_copy(seed, monkeypatch):
    rnd = random.Random(seed)
    settings = {"domain_id": 1, "open": rnd.random() < 0.7, "click": rnd.choice(["yes", "htmlonly", "no"]),
                "unsubscribe": rnd.random() < 0.7, "html_footer": rnd.choice(["", "", "", "<p>bye %recipient.name%</p>"]),
                "text_footer": rnd.choice(["", "\nbye\n"])}
    to = [f"r{i}@d{i}.example.net" for i in range(12)]
    html = [rnd.choice(HTML) for _ in range(8)]
    text = [rnd.choice(TEXT) for _ in range(8)]
    for _ in range(rnd.choice([0, 0, 1, 2])):
        html.insert(rnd.randrange(9), rnd.choice(ODD_HTML))
        text.insert(rnd.randrange(9), rnd.choice(ODD_TEXT))
    html, text = "<html><body>" + "".join(html) + "</body></html>", "".join(text)
    odd = rnd.random() < 0.3  # values that change what rendering finds, for some recipients
    variables = {r: {k: rnd.choice(VALUES) if odd and rnd.random() < 0.5 else f"Customer {i}"
                     for k in ("name", "id", "link")} for i, r in enumerate(to)}
    fields = {"from": ["shop@bench.example.test"], "to": [", ".join(to)], "subject": ["Hi"],
              "text": [text], "html": [html], "o:tag": ["news"], "recipient-variables": [json.dumps(variables)]}
    draft = compose("bench.example.test", fields, [], [])
    t = tracker(settings)
    assert render(t, draft, monkeypatch) == render(t, one_by_one(draft), monkeypatch)


def test_an_ordinary_batch_uses_the_template(monkeypatch):
    """The end-to-end benchmark's batch shape: every copy from the template, byte for byte as before."""
    line = "Hello %recipient.name%, thank you for your order. Your parcel is on its way.\r\n"
    links = "".join(f'<p><a href="https://shop.example.com/orders/item-{k}?ref=mail">Item {k}</a></p>\r\n'
                    for k in range(10))
    to = [f"b{i}@d{i}.example.net" for i in range(50)]
    fields = {"from": ["Bench <bench@bench.example.test>"], "to": [",".join(to)], "subject": ["Order, %recipient.name%"],
              "text": [line * 60], "html": [f"<html><body><p>Hello %recipient.name%</p>\r\n{links}</body></html>\r\n"],
              "o:tag": ["run"],
              "recipient-variables": [json.dumps({r: {"name": f"Customer {i}"} for i, r in enumerate(to)})]}
    draft = compose("bench.example.test", fields, [], [])
    assert all(c.filled is not None for c in draft.copies)
    t = tracker({"domain_id": 1, "open": True, "click": "yes", "unsubscribe": True, "html_footer": "",
                 "text_footer": ""})
    made = []
    real = tracking._Batch.fill
    monkeypatch.setattr(tracking._Batch, "fill", lambda self, signer, copy: made.append(1) or real(self, signer, copy))
    fast = render(t, draft, monkeypatch)
    assert len(made) == len(to)
    assert fast == render(t, one_by_one(draft), monkeypatch)
    assert b"Customer 7" in fast[7] and b"/c/" in fast[7]
