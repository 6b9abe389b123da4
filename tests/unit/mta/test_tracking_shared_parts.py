"""Parts rendered once and kept across messages (tracking._SHARED_PARTS), the links' slots kept
(_click_slot) and a text part filled from its literals encoded once (_TextPart.fill) give the bytes the
render gave without them: over generated messages (composed and caller-built MIME: encodings, charsets,
nested and digest parts, bare LFs, long lines, placeholders, parts repeated in a message), settings,
footers and domains, each rendered with the cache cold and then warm, under fixed nonces."""

from __future__ import annotations

import base64
import binascii
import json
import random
import secrets
import time

import pytest

from envoi.mta import tracking
from envoi.mta.compose import Composed, Draft, compose

DOMAINS = [{"id": 1, "account_id": 1, "name": "shop.example.test", "web_prefix": "email", "web_scheme": "https"},
           {"id": 2, "account_id": 2, "name": "other.example.test", "web_prefix": "t", "web_scheme": "http"}]
KEY = secrets.token_bytes(32)

HTML = ['<p><a href="https://shop.example.com/orders/item-1?ref=mail">Item 1</a></p>\r\n',
        "<a href='https://b.example/y'>b</a>", '<a href="mailto:help@shop.example">mail</a>', '<a href="#top">x</a>',
        '<a href="%unsubscribe_url%">all</a>', '<a href="%tag_unsubscribe_url%">tag</a>', "<p>Héllo</p>",
        '<A HREF="HTTPS://D.EXAMPLE/Q">d</A>', '<a href="https://x.example/?a=1&amp;b=2">e</a>', "\r\n", "\n",
        '<a href="https://ü.example/ä">idn</a>', '<a href="http://[broken">br</a>', "<p>" + "y" * 990 + "</p>",
        '<a href="https://l.example/' + "z" * 980 + '">long</a>', "_url", "%unsub", "<p>plain text here</p>",
        '<a href="https://s.example/a\r\nb">split</a>', '<a href="http://127.0.0.1:8025/o/x">own</a>']
TEXT = ["see https://t.example/p. ", "\r\n", "\n", "%unsubscribe_url% ", "Grüße ", "x" * 996, "_url", "_u",
        "https://t.example/" + "q" * 990 + "\r\n", "plain words ", "(https://p.example/)", "%tag_unsubscribe_url%"]
FOOTERS = ["", "", "<p>bye <a href=\"%unsubscribe_url%\">here</a></p>", "rl%\n", "\r\nbye %unsubscribe_url%\r\n",
           "l% and more\n"]


def settings(rnd: random.Random, domain: dict) -> dict:
    return {"domain_id": domain["id"], "open": rnd.random() < 0.7, "click": rnd.choice(["yes", "htmlonly", "no"]),
            "unsubscribe": rnd.random() < 0.7, "html_footer": rnd.choice(FOOTERS), "text_footer": rnd.choice(FOOTERS)}


def tracker(current: dict) -> tracking.Tracking:
    class Stub(tracking.Tracking):
        def settings_for(self, domain_id, conn=None):
            return current[domain_id]

    return Stub(None, None, KEY, "http://127.0.0.1:8025", host_mode="domain")


def body(rnd: random.Random, fragments: list[str], n: int) -> str:
    return "".join(rnd.choice(fragments) for _ in range(n))


def leaf(rnd: random.Random, subtype: str, text: str) -> bytes:
    """A text part as a caller may build it: 8bit, quoted-printable or base64, UTF-8 or Latin-1."""
    charset = rnd.choice(["utf-8", "utf-8", "iso-8859-1", ""])
    data = text.encode(charset or "utf-8", "replace")
    cte = rnd.choice(["", "8bit", "quoted-printable", "base64"])
    if cte == "quoted-printable":
        data = binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")
    elif cte == "base64":
        data = base64.encodebytes(data).replace(b"\n", b"\r\n")
    head = f"Content-Type: text/{subtype}" + (f'; charset="{charset}"' if charset else "") + "\r\n"
    if cte:
        head += f"Content-Transfer-Encoding: {cte}\r\n"
    if rnd.random() < 0.1:
        head += "Content-Disposition: attachment\r\n"
    return head.encode() + b"\r\n" + data


def multipart(rnd: random.Random, kind: str, parts: list[bytes], boundary: str) -> bytes:
    out = f'Content-Type: multipart/{kind}; boundary="{boundary}"\r\n\r\n'.encode()
    for p in parts:
        out += f"--{boundary}\r\n".encode() + p + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def raw_message(rnd: random.Random, i: int, html: str, text: str) -> bytes:
    head = (f"From: a@shop.example.test\r\nTo: ann@dest.test\r\nSubject: s\r\nMessage-ID: <m{i}@x>\r\n"
            "MIME-Version: 1.0\r\n").encode()
    h, t = leaf(rnd, "html", html), leaf(rnd, "plain", text)
    shape = rnd.choice(["alt", "mixed", "nested", "digest", "html", "repeat", "rfc822"])
    b = f"b{i}-{rnd.randrange(1000)}"
    if shape == "alt":
        entity = multipart(rnd, "alternative", [t, h], b)
    elif shape == "mixed":
        entity = multipart(rnd, "mixed", [multipart(rnd, "alternative", [t, h], b + "i"),
                                          b"Content-Type: application/pdf\r\n\r\n%PDF-1"], b)
    elif shape == "nested":
        entity = multipart(rnd, "mixed", [h, multipart(rnd, "alternative", [t, h], b + "i"), t], b)
    elif shape == "digest":  # the same bytes as a part of a digest (default message/rfc822) and of a mixed
        entity = multipart(rnd, "mixed", [multipart(rnd, "digest", [b"\r\n" + t, t], b + "d"), t], b)
    elif shape == "repeat":
        entity = multipart(rnd, "mixed", [h, t, h, t], b)
    elif shape == "rfc822":
        entity = multipart(rnd, "mixed", [t, b"Content-Type: message/rfc822\r\n\r\n" + head
                                          + multipart(rnd, "alternative", [t, h], b + "r")], b)
    else:
        entity = h
    if rnd.random() < 0.1:
        entity = entity.replace(b"\r\n", b"\n")  # bare LFs throughout
    return head + entity


def drafts(rnd: random.Random, n: int) -> list[tuple[dict, Draft]]:
    """n messages drawn from a few bodies (so parts repeat across messages, as the API's sends do)."""
    bodies = [(body(rnd, HTML, rnd.randrange(1, 9)), body(rnd, TEXT, rnd.randrange(1, 6))) for _ in range(4)]
    out = []
    for i in range(n):
        domain = rnd.choice(DOMAINS)
        html, text = rnd.choice(bodies)
        if rnd.random() < 0.5:
            fields = {"from": [f"a@{domain['name']}"], "to": [rnd.choice(["ann@dest.test", "ann@d.test, bob@e.test"])],
                      "subject": ["s"], "html": [html], "text": [text]}
            if rnd.random() < 0.5:
                fields["o:tag"] = ["news"]
            out.append((domain, compose(domain["name"], fields, [], [])))
        else:
            raw = raw_message(rnd, i, html, text)
            out.append((domain, Draft(domain=domain["name"], message_id=f"m{i}@x", mail_from="a@shop.example.test",
                                      method="smtp", copies=[Composed(["ann@dest.test"], raw, {})],
                                      tags=["t"] * (i % 2))))
    return out


def render(t: tracking.Tracking, domain: dict, draft: Draft, monkeypatch) -> list[bytes]:
    count = iter(range(1, 10**9))
    monkeypatch.setattr(tracking.os, "urandom", lambda n: (next(count).to_bytes(4, "big") * n)[:n])
    return [c.mime for c in t.render(domain, draft).copies]


def cold(t: tracking.Tracking, domain: dict, draft: Draft, monkeypatch) -> list[bytes]:
    """The render with nothing kept from other messages."""
    kept = tracking._SHARED_PARTS
    tracking._SHARED_PARTS = tracking._SharedParts(budget=0)
    tracking._click_slot.cache_clear()
    try:
        return render(t, domain, draft, monkeypatch)
    finally:
        tracking._SHARED_PARTS = kept


@pytest.mark.parametrize("seed", range(40))
def test_messages_render_as_with_nothing_kept(seed, monkeypatch):
    rnd = random.Random(seed)
    current = {d["id"]: settings(rnd, d) for d in DOMAINS}
    t = tracker(current)
    monkeypatch.setattr(tracking, "_SHARED_PARTS", tracking._SharedParts(budget=1 << 20))
    hits = 0
    for domain, draft in drafts(rnd, 30):
        if rnd.random() < 0.2:  # the domain's settings change between messages (kept parts are per settings)
            current[domain["id"]] = settings(rnd, domain)
        expected = cold(t, domain, draft, monkeypatch)
        before = len(tracking._SHARED_PARTS._parts)
        for _ in range(3):  # seen, kept, then rendered from what was kept
            assert render(t, domain, draft, monkeypatch) == expected
        hits += len(tracking._SHARED_PARTS._parts) > before
    assert hits  # parts were kept (and the renders after used them)


def test_a_kept_part_is_used_for_another_message(monkeypatch):
    """The end-to-end benchmark's urlencoded send: each message its own Message-ID and boundary, the same
    parts; from the second message on, its parts come from what was kept."""
    monkeypatch.setattr(tracking, "_SHARED_PARTS", tracking._SharedParts(budget=1 << 20))
    current = {1: {"domain_id": 1, "open": True, "click": "yes", "unsubscribe": True, "html_footer": "",
                   "text_footer": ""}}
    t = tracker(current)
    links = "".join(f'<p><a href="https://shop.example.com/orders/item-{k}?ref=mail">Item {k}</a></p>\r\n'
                    for k in range(10))
    fields = {"from": ["a@shop.example.test"], "to": ["ann@dest.test"], "subject": ["s"], "o:tag": ["bench"],
              "text": ["Thank you for your order.\r\n" * 60], "html": [f"<html><body>{links}</body></html>\r\n"]}
    messages = [compose("shop.example.test", fields, [], []) for _ in range(4)]
    for draft in messages:
        assert render(t, DOMAINS[0], draft, monkeypatch) == cold(t, DOMAINS[0], draft, monkeypatch)
    assert len(tracking._SHARED_PARTS._parts) == 2  # the text and the HTML part, kept from the second message
    calls = []
    monkeypatch.setattr(tracking._Plan, "_text", lambda *a, **k: calls.append(1))
    render(t, DOMAINS[0], compose("shop.example.test", fields, [], []), monkeypatch)
    assert calls == []  # neither part was rendered again


def test_kept_parts_stay_within_their_budget():
    shared = tracking._SharedParts(budget=100)
    for i in range(50):
        for _ in range(2):  # kept on the second sight
            shared.put(("k", i), ("v",), 30)
        assert shared.size <= 100
        assert shared.get(("k", i)) == ("v",)
    assert len(shared._parts) == 3 and shared.get(("k", 0)) is None  # the oldest went first
    shared.put(("big",), ("v",), 101)
    shared.put(("big",), ("v",), 101)
    assert shared.get(("big",)) is None


def old_fill(part: tracking._TextPart, values: dict[str, str]) -> bytes:
    """_TextPart.fill as it was: the text joined, encoded and measured per recipient."""
    text = part.pieces[:]
    text[1::2] = [values[k] for k in part.pieces[1::2]]
    data = "".join(text).encode("utf-8")
    if data.isascii() and tracking._lines_fit(data):
        return part.head + b"Content-Transfer-Encoding: 7bit\r\n\r\n" + data
    encoded = binascii.b2a_qp(data, istext=True)
    if b"\r\n" not in data:
        encoded = encoded.replace(b"=\n", b"=\r\n")
    return part.head + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + encoded


def test_text_part_fill_is_the_old_fill():
    rnd = random.Random(7)
    literal = ["", "a", "\r\n", "é", "x" * 400, "\r\n" + "y" * 300, "z\r\nw", "\r", "\n"]
    value = ["", "https://e.example/c/" + "t" * 60, "v" * 500, "a\r\nb", "ü", "\n"]
    checked = 0
    for _ in range(3000):
        n = rnd.randrange(0, 6)
        pieces = []
        for i in range(2 * n + 1):
            pieces.append("".join(rnd.choice(literal) for _ in range(rnd.randrange(4))) if i % 2 == 0 else f"k{i}")
        part = tracking._TextPart(b"Content-Type: text/plain\r\n", pieces)
        for _ in range(3):
            values = {k: "".join(rnd.choice(value) for _ in range(rnd.randrange(3))) for k in pieces[1::2]}
            assert part.fill(values) == old_fill(part, values), (pieces, values)
            checked += 1
    # lines of exactly MAX_LINE, MAX_LINE + 1 (which may be MAX_LINE and a CR) and MAX_LINE + 2 octets
    for extra, cr in ((0, ""), (1, ""), (0, "\r"), (1, "\r"), (2, "")):
        part = tracking._TextPart(b"", ["a" * (tracking.MAX_LINE - 10 + extra), "k", cr + "\nb"])
        values = {"k": "v" * 10}
        assert part.fill(values) == old_fill(part, values)
    assert json.dumps(checked)


def test_kept_parts_are_not_used_after_their_time_and_are_dropped_without_traffic():
    """Kept parts are message content in plaintext: none is used past the ttl, and the purge timer drops them
    all within another ttl even if no message comes."""
    assert tracking._SHARED_PARTS.timer  # the process's own parts are purged by the timer
    kept = tracking._SharedParts(budget=1 << 20, ttl=0.2, timer=True)
    for key in ("a", "b"):
        kept.put((key,), ("part " + key,), 10)  # seen
        kept.put((key,), ("part " + key,), 10)  # kept
    assert kept.get(("a",)) == ("part a",) and kept.size == 20
    time.sleep(0.25)
    assert kept.get(("a",)) is None and kept.get(("b",)) is None  # expired: rendered again, not used
    deadline = time.monotonic() + 2
    while kept._parts and time.monotonic() < deadline:
        time.sleep(0.02)
    assert kept._parts == {} and kept.size == 0 and kept._purging is None  # dropped, and the timer stopped


def test_a_part_kept_again_after_it_expired_is_used():
    kept = tracking._SharedParts(budget=1 << 20, ttl=0.1)
    kept.put(("a",), ("old",), 10)
    kept.put(("a",), ("old",), 10)
    time.sleep(0.15)
    kept.put(("a",), ("new",), 10)  # the expired one is dropped first, then this one kept
    assert kept.get(("a",)) == ("new",) and kept.size == 10
