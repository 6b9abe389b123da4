"""Tracking render on raw MIME: odd HTML, caller-built MIME (encodings, attachments, nested parts), batch
sends with recipient-variables, and the host links point at. Rendered straight through services.tracking."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import re
from urllib.parse import urlsplit

import pytest

from envoi.mta.compose import Composed, Draft, compose

ODD_HTML = (
    '<html><body><p title="say &quot;hi&quot; &amp; go">Héllo</p>'
    '<a class="x" title=\'it\'\'s\' href="https://a.example/x?q=1&amp;r=2">a</a>'
    "<a href='https://b.example/y'>b</a>"
    '<a href="mailto:help@shop.example">mail</a>'
    '<a href="#top">anchor</a>'
    '<a href="%unsubscribe_url%">all</a>'
    '<a href="%tag_unsubscribe_url%">tag</a>'
    '<A HREF="HTTPS://D.EXAMPLE/Q">d</A>'
    '<a href="https://ü.example/ä?x=é">idn</a>'
    '<a href="http://[broken">broken</a>'
    "</BODY></html>"
)


@pytest.fixture
def tracked(services, domain):
    for kind in ("open", "click", "unsubscribe"):
        services.tracking.update_settings(domain, kind, {"active": "yes"})
    return domain


def parse(mime: bytes):
    return email.message_from_bytes(mime, policy=email.policy.default)


def links(html: str) -> list[str]:
    return re.findall(r"""(?:href|HREF|src)=["']([^"']*)["']""", html)


def token(services, kind: str, url: str, host: str) -> dict:
    assert url.startswith(f"http://{host}/{kind}/"), url
    return services.tracking.verify(kind, url.rsplit("/", 1)[1])


def test_odd_html_is_rewritten_as_before(services, tracked):
    host = f"email.{tracked['name']}"
    draft = compose(tracked["name"], {"from": [f"a@{tracked['name']}"], "to": ["ann@dest.test"], "subject": ["s"],
                                      "html": [ODD_HTML], "text": ["go to https://t.example/p. or #x"],
                                      "o:tag": ["news"]}, [], [])
    [copy] = services.tracking.render(tracked, draft).copies
    msg = parse(copy.mime)
    html = msg.get_body(("html",)).get_content()
    found = links(html)
    # tracked: the two quoted styles, upper-case tags and scheme, non-ASCII URLs (signed as written)
    targets = [token(services, "c", u, host)["extra"] for u in found if "/c/" in u]
    assert targets == ["https://a.example/x?q=1&r=2", "https://b.example/y", "HTTPS://D.EXAMPLE/Q",
                       "https://ü.example/ä?x=é"]
    # left alone: mailto, anchors, a URL without a host; the other attributes stay as they were
    assert "mailto:help@shop.example" in found and "#top" in found and "http://[broken" in found
    assert 'title="say &quot;hi&quot; &amp; go">Héllo' in html and "title='it''s'" in html
    # placeholders: the whole domain and the message's tags; footer and pixel before </BODY>
    unsubs = [token(services, "u", u, host)["extra"] for u in found if "/u/" in u]
    assert unsubs == [["*"], ["news"], ["*"]]  # %unsubscribe_url%, %tag_unsubscribe_url%, the footer's
    [pixel] = [u for u in found if "/o/" in u]
    assert token(services, "o", pixel, host)["recipient"] == "ann@dest.test"
    assert html.index(pixel) < html.index("</BODY>")
    text = msg.get_body(("plain",)).get_content()
    [text_click] = re.findall(r"http://\S+/c/[A-Za-z0-9_-]+", text)
    assert token(services, "c", text_click, host)["extra"] == "https://t.example/p."
    assert "or #x" in text and "To unsubscribe click: <http://" + host + "/u/" in text
    https_unsub, mailto = re.findall(r"<([^>]+)>", msg["List-Unsubscribe"])
    assert token(services, "u", https_unsub, host)["extra"] == ["*"]
    assert mailto == f"mailto:unsubscribe@{tracked['name']}?subject=unsubscribe%20{https_unsub.rsplit('/', 1)[1]}"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert max(map(len, copy.mime.split(b"\r\n"))) <= 998 and b"\n" not in copy.mime.replace(b"\r\n", b"")


def test_caller_built_mime(services, tracked):
    """What messages.mime and SMTP bring: base64 and quoted-printable parts, a text/html attachment (left
    alone), a forwarded message, a caller's own List-Unsubscribe (kept), LF-free CRLF throughout."""
    host = f"email.{tracked['name']}"
    html_b64 = base64.b64encode('<p>Grüße <a href="https://q.example/1">x</a></p>'.encode()).decode()
    attached = base64.b64encode(b'<a href="https://attached.example/">not mine</a>').decode()
    mime = (
        "From: a@{d}\r\nTo: bob@dest.test\r\nSubject: s\r\nMessage-ID: <m1@{d}>\r\n"
        "List-Unsubscribe: <https://theirs.example/u>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="OUT"\r\n\r\npreamble\r\n'
        '--OUT\r\nContent-Type: multipart/alternative; boundary=IN\r\n\r\n'
        "--IN\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        "caf=E9 https://p.example/2\r\n"
        "--IN\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n"
        f"Content-ID: <h1>\r\n\r\n{html_b64}\r\n--IN--\r\n"
        "--OUT\r\nContent-Type: text/html; name=page.html\r\nContent-Disposition: attachment; filename=page.html\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{attached}\r\n"
        "--OUT\r\nContent-Type: message/rfc822\r\n\r\nSubject: fwd\r\nContent-Type: text/plain\r\n\r\n"
        "see https://fwd.example/3\r\n--OUT--\r\nepilogue\r\n"
    ).format(d=tracked["name"]).encode()
    draft = Draft(domain=tracked["name"], mail_from=f"a@{tracked['name']}", message_id=f"m1@{tracked['name']}",
                  copies=[Composed(["bob@dest.test", "cy@dest.test"], mime, {})], method="smtp")
    copies = services.tracking.render(tracked, draft).copies
    assert [c.recipients for c in copies] == [["bob@dest.test"], ["cy@dest.test"]]
    for copy in copies:
        assert b"preamble\r\n--OUT\r\n" in copy.mime and copy.mime.endswith(b"--OUT--\r\nepilogue\r\n")
        msg = parse(copy.mime)
        assert msg.get_all("List-Unsubscribe") == ["<https://theirs.example/u>"]  # the caller's, kept
        parts = [p for p in msg.walk() if not p.is_multipart()]
        plain, html, attachment = parts[0], parts[1], parts[2]
        assert plain.get_content().startswith("café http://" + host + "/c/")
        assert "Grüße" in html.get_content() and html["Content-ID"] == "<h1>"
        [click] = [u for u in links(html.get_content()) if "/c/" in u]
        data = token(services, "c", click, host)
        assert data["extra"] == "https://q.example/1" and data["recipient"] == copy.recipients[0]
        assert attachment.get_content() == '<a href="https://attached.example/">not mine</a>'
        assert "https://fwd.example/" not in copy.mime.decode()  # the forwarded message's text part, tracked too


def test_batch_with_recipient_variables(services, tracked):
    host = f"email.{tracked['name']}"
    people = {f"p{i}@dest.test": {"id": i, "name": f"P{i}"} for i in range(5)}
    html = '<p>Hi %recipient.name%</p><a href="https://shop.example/?u=%recipient.id%">shop</a>' \
           '<a href="https://shop.example/all">all</a>'
    draft = compose(tracked["name"], {"from": [f"a@{tracked['name']}"], "to": [", ".join(people)], "subject": ["s"],
                                      "html": [html], "recipient-variables": [json.dumps(people)]}, [], [])
    copies = services.tracking.render(tracked, draft).copies
    assert [c.recipients for c in copies] == [[a] for a in people]
    for i, copy in enumerate(copies):
        body = parse(copy.mime).get_body(("html",)).get_content()
        assert f"Hi P{i}" in body
        clicks = [token(services, "c", u, host) for u in links(body) if "/c/" in u]
        assert [c["extra"] for c in clicks] == [f"https://shop.example/?u={i}", "https://shop.example/all"]
        assert {c["recipient"] for c in clicks} == {f"p{i}@dest.test"}
        assert {c["message_id"] for c in clicks} == {draft.message_id}


def test_public_url_mode_and_web_prefix_scheme(services, tracked, settings):
    from dataclasses import replace as dc_replace

    from envoi.mta.tracking import Tracking

    draft = compose(tracked["name"], {"from": [f"a@{tracked['name']}"], "to": ["z@dest.test"], "subject": ["s"],
                                      "html": ['<a href="https://x.example/">x</a>']}, [], [])
    custom = dict(tracked, web_prefix="links", web_scheme="https")
    [copy] = services.tracking.render(custom, draft).copies
    assert {urlsplit(u).netloc for u in links(parse(copy.mime).get_body(("html",)).get_content())} == {
        f"links.{tracked['name']}"}
    assert all(u.startswith("https://") for u in links(parse(copy.mime).get_body(("html",)).get_content()))
    dev = Tracking(services.db, services.events, settings.secret_key, settings.public_url, host_mode="public_url")
    [copy] = dev.render(tracked, dc_replace(draft)).copies
    assert all(u.startswith("http://127.0.0.1:8025/") for u in links(parse(copy.mime).get_body(("html",)).get_content()))


def test_line_ends_of_a_caller_built_part(services, tracked):
    """A part with bare LFs comes out CRLF throughout (and so does a footer written with LFs); a link whose
    quoted href spans a line is sealed as read with LF line ends; a CRLF body is left CRLF."""
    host = f"email.{tracked['name']}"
    services.tracking.update_settings(tracked, "unsubscribe", {"active": "yes", "text_footer": "\nbye\n%unsubscribe_url%\n"})
    mime = (
        "From: a@{d}\r\nTo: bob@dest.test\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nline one\nsee https://t.example/p\r\nend\n\r\n"
        '--B\r\nContent-Type: text/html\r\n\r\n<p><a href="https://a.example/x\r\ny">a</a></p>\r\n</body>\r\n--B--\r\n'
    ).format(d=tracked["name"]).encode()
    draft = Draft(domain=tracked["name"], mail_from=f"a@{tracked['name']}", message_id=f"m2@{tracked['name']}",
                  copies=[Composed(["bob@dest.test"], mime, {})], method="smtp")
    [copy] = services.tracking.render(tracked, draft).copies
    assert copy.mime.count(b"\n") == copy.mime.count(b"\r\n")  # no bare LF left
    msg = parse(copy.mime)
    plain, html = (p for p in msg.walk() if not p.is_multipart())
    text = plain.get_content().replace("\r\n", "\n")
    assert text.startswith("line one\nsee http://" + host + "/c/") and "\nend\n\nbye\nhttp://" + host + "/u/" in text
    [click] = [u for u in links(html.get_content()) if "/c/" in u]
    assert token(services, "c", click, host)["extra"] == "https://a.example/x\ny"


def test_a_message_without_a_body_is_stored_as_it_came(services, tracked):
    """Header fields and no blank line (SMTP lets a client send that): nothing to track, nothing cut off,
    no List-Unsubscribe added after a field without its line end."""
    mime = f"From: a@{tracked['name']}\r\nTo: bob@dest.test\r\nSubject: headers only".encode()
    draft = Draft(domain=tracked["name"], mail_from=f"a@{tracked['name']}", message_id=f"m3@{tracked['name']}",
                  copies=[Composed(["bob@dest.test"], mime, {})], method="smtp")
    [copy] = services.tracking.render(tracked, draft).copies
    assert copy.mime == mime


def test_a_footer_completing_a_placeholder(services, tracked):
    """The text is scanned for placeholders once; one the footer completes is still substituted."""
    host = f"email.{tracked['name']}"
    services.tracking.update_settings(tracked, "unsubscribe", {"active": "yes", "text_footer": "l% bye"})
    mime = f"From: a@{tracked['name']}\r\nTo: ann@dest.test\r\nContent-Type: text/plain\r\n\r\ngo to %unsubscribe_ur".encode()
    draft = Draft(domain=tracked["name"], mail_from=f"a@{tracked['name']}", message_id=f"m4@{tracked['name']}",
                  copies=[Composed(["ann@dest.test"], mime, {})], method="smtp")
    [copy] = services.tracking.render(tracked, draft).copies
    text = parse(copy.mime).get_body(("plain",)).get_content()
    assert "%unsubscribe" not in text and f"go to http://{host}/u/" in text and text.rstrip().endswith(" bye")


@pytest.mark.parametrize("kind", ["text", "html"])
def test_a_footer_written_with_crlf_adds_no_bare_cr(services, tracked, kind):
    """A footer set from a form's textarea comes with CRLF line ends: each stays one CRLF (was CR CR LF)."""
    footer = "\r\nbye\r\n%unsubscribe_url%\r\n" if kind == "text" else "<p>bye</p>\r\n<p>%unsubscribe_url%</p>\r\n"
    services.tracking.update_settings(tracked, "unsubscribe", {"active": "yes", f"{kind}_footer": footer})
    draft = compose(tracked["name"], {"from": [f"a@{tracked['name']}"], "to": ["ann@dest.test"], "subject": ["s"],
                                      kind: ["hello\r\nthere" if kind == "text" else "<p>hello</p></body>"]}, [], [])
    [copy] = services.tracking.render(tracked, draft).copies
    assert b"\r\r" not in copy.mime and copy.mime.count(b"\r") == copy.mime.count(b"\r\n")
    assert b"bye" in copy.mime
