"""The dev sink's pages as a mail catcher, in a real Chromium: real mail over SMTP, then the pages.

Mail is sent with smtplib, not aiosmtplib: asyncio.run() cannot run while Playwright is started
(tests/support/browser.py).
"""

from __future__ import annotations

import os
import re
import smtplib
import socket
from email import policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from playwright.sync_api import expect

from envoi.dev import sink_pages
from envoi.dev.sink import Sink
from tests.support.browser import axe_violations
from tests.support.servers import serve_in_background, shutdown

# A 1x1 transparent PNG: what the remote image server answers.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


@pytest.fixture
def sink():
    with Sink() as s:
        yield s


@pytest.fixture
def image_server():
    """A remote image host on loopback that counts the requests it gets."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    serve_in_background(server)
    server.hits = hits
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    shutdown(server)
    server.server_close()


def deliver(sink: Sink, message: EmailMessage | bytes, recipients=("bob@rcpt.test",),
            sender="alice@sender.test") -> dict:
    """Send one message over SMTP; returns it as the sink stored it."""
    # smtplib sends bytes as they are: the message must have SMTP's CRLF line ends already.
    data = message if isinstance(message, bytes) else message.as_bytes(policy=policy.SMTP)
    count = sink.stats()["messages"]
    with smtplib.SMTP("127.0.0.1", sink.smtp_port) as client:
        client.sendmail(sender, list(recipients), data)
    return sink.wait_for(count + 1)[-1]


def mail(subject: str, text: str = "Hello text", to: str = "bob@rcpt.test", html: str | None = None,
         sender: str = "Alice <alice@sender.test>") -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["X-Campaign"] = "spring <sale> & more"
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg


HOSTILE_HTML = """<html><head><title>Mail title</title></head><body>
<p id="hello">Hello <b>HTML</b></p>
<img id="remote" alt="remote" src="{image_url}/x.png">
<script>
  document.title = "script ran";
  document.body.insertAdjacentHTML("beforeend", "<p id='ran'>script ran</p>");
  try {{ parent.document.title = "script ran"; }} catch (e) {{}}
</script>
</body></html>"""


def rows(page):
    return page.locator("main tbody tr")


def test_list_newest_first_and_search(sink, page):
    deliver(sink, mail("Welcome aboard", to="bob@rcpt.test"))
    deliver(sink, mail("Invoice 42", to="carol@rcpt.test", sender="Billing <billing@shop.test>"),
            recipients=["carol@rcpt.test"], sender="billing@shop.test")

    response = page.goto(sink.url)
    assert response.headers["content-security-policy"] == sink_pages.PAGE_CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    expect(rows(page)).to_have_count(2)
    expect(rows(page).nth(0)).to_contain_text("Invoice 42")  # newest first
    expect(rows(page).nth(0)).to_contain_text("carol@rcpt.test")
    expect(rows(page).nth(0)).to_contain_text("Billing <billing@shop.test>")
    expect(rows(page).nth(1)).to_contain_text("Welcome aboard")
    expect(rows(page).nth(1).locator("td").nth(3)).to_have_text(re.compile(r"^\d+ B$"))  # size
    expect(rows(page).nth(1).locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-\d\d-\d\dT"))

    page.get_by_label("Search").fill("welcome")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(r"\?q=welcome$"))
    expect(rows(page)).to_have_count(1)
    expect(rows(page).nth(0)).to_contain_text("Welcome aboard")
    for query, subject in (("CAROL@", "Invoice 42"), ("shop.test", "Invoice 42"), ("alice", "Welcome aboard")):
        page.goto(f"{sink.url}/?q={query}")
        expect(rows(page)).to_have_count(1)
        expect(rows(page).nth(0)).to_contain_text(subject)
    page.goto(f"{sink.url}/?q=nothing-like-this")
    expect(rows(page)).to_have_count(0)
    expect(page.locator("main")).to_contain_text("No messages.")


def test_view_shows_headers_text_and_html_in_a_sandbox_without_scripts_or_remote_images(
        sink, page, image_server):
    msg = deliver(sink, mail("Spring sale", text="Plain words here",
                             html=HOSTILE_HTML.format(image_url=image_server.url)))
    errors = []
    page.on("console", lambda m: errors.append(m) if m.type == "error" else None)

    page.goto(sink.url)
    page.get_by_role("link", name="Spring sale").click()
    expect(page).to_have_url(f"{sink.url}/view/{msg['id']}")
    page.wait_for_load_state("load")  # the window's load waits for the iframe and its images
    expect(page.get_by_role("heading", level=1)).to_have_text("Spring sale")
    expect(page.locator(".byline")).to_contain_text("From Alice <alice@sender.test> · To bob@rcpt.test")
    headers = page.locator("table.headers").first
    expect(headers.locator("tr", has=page.locator("th", has_text="X-Campaign"))).to_contain_text(
        "spring <sale> & more")
    expect(headers.locator("tr", has=page.locator("th", has_text="Subject"))).to_contain_text("Spring sale")
    expect(page.locator("pre.mail-text")).to_have_text(re.compile(r"^Plain words here\s*$"))

    iframe = page.locator("iframe.mail-html")
    assert iframe.get_attribute("sandbox") == ""  # sandboxed, with no allow-* at all
    frame = page.frame_locator("iframe.mail-html")
    expect(frame.locator("#hello")).to_have_text("Hello HTML")
    expect(frame.locator("#ran")).to_have_count(0)  # the mail's script did not run
    mail_frame = page.frame(url=re.compile(r"/view/\d+/html"))
    assert mail_frame.evaluate("document.title") == "Mail title"
    assert page.title() == "Spring sale - Envoi sink"
    assert image_server.hits == []  # the remote image was not fetched
    assert frame.locator("#remote").evaluate("img => img.naturalWidth") == 0
    # Our own pages break none of their CSP (no inline style or script); only the mail is refused.
    assert [m.text for m in errors if "/html" not in (m.location.get("url") or "")] == []

    page.get_by_role("link", name="Load remote images").click()
    expect(page).to_have_url(f"{sink.url}/view/{msg['id']}?images=1")
    expect(frame.locator("#remote")).to_be_visible()
    page.wait_for_load_state("load")
    assert image_server.hits == ["/x.png"]
    assert frame.locator("#remote").evaluate("img => img.naturalWidth") == 1
    expect(frame.locator("#ran")).to_have_count(0)  # still no script with images on


def test_mail_html_is_served_sandboxed_by_its_own_csp(sink):
    msg = deliver(sink, mail("Csp", html="<p>hi</p>"))
    plain = requests.get(f"{sink.url}/view/{msg['id']}/html", timeout=5)
    assert plain.headers["Content-Security-Policy"] == (
        "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:")
    assert plain.headers["X-Content-Type-Options"] == "nosniff"
    assert "<p>hi</p>" in plain.text
    images = requests.get(f"{sink.url}/view/{msg['id']}/html?images=1", timeout=5)
    assert images.headers["Content-Security-Policy"] == (
        "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data: https: http:")
    text_only = deliver(sink, mail("Text only"))
    assert requests.get(f"{sink.url}/view/{text_only['id']}/html", timeout=5).status_code == 404


def test_attachment_and_raw_downloads_give_the_exact_bytes(sink, page):
    payload = os.urandom(3000) + b"\r\n.\r\nend"  # binary, with a line SMTP would dot-stuff
    message = mail("With attachment")
    message.add_attachment(payload, maintype="application", subtype="pdf", filename="report été.pdf")
    msg = deliver(sink, message)

    page.goto(f"{sink.url}/view/{msg['id']}")
    link = page.get_by_role("link", name="report été.pdf")
    expect(link).to_be_visible()
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename == "report été.pdf"
    with open(download.path(), "rb") as f:
        assert f.read() == payload
    reply = page.request.get(f"{sink.url}/view/{msg['id']}/attachments/0")
    assert reply.headers["content-type"] == "application/pdf"
    assert reply.headers["content-disposition"].startswith("attachment;")

    with page.expect_download() as info:
        page.get_by_role("link", name="Download raw").click()
    with open(info.value.path(), "rb") as f:
        assert f.read() == msg["data"].encode("utf-8", "surrogateescape")  # exactly what was received
    reply = page.request.get(f"{sink.url}/view/{msg['id']}/raw")
    assert reply.headers["content-type"] == "message/rfc822"
    assert reply.headers["content-disposition"].startswith("attachment;")
    assert page.request.get(f"{sink.url}/view/{msg['id']}/attachments/1").status == 404


def test_delete_one_then_all(sink, page):
    keep = deliver(sink, mail("Keep me"))
    gone = deliver(sink, mail("Delete me"))
    page.on("dialog", lambda dialog: dialog.accept())  # the pages confirm before deleting

    page.goto(f"{sink.url}/view/{gone['id']}")
    page.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(f"{sink.url}/")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).nth(0)).to_contain_text("Keep me")
    assert [m["id"] for m in sink.messages()] == [keep["id"]]
    assert page.request.get(f"{sink.url}/view/{gone['id']}").status == 404

    page.get_by_role("button", name="Delete all").click()
    expect(page.locator("main")).to_contain_text("No messages.")
    assert sink.messages() == []


def test_delete_all_asks_first(sink, page):
    deliver(sink, mail("Still here"))
    page.on("dialog", lambda dialog: dialog.dismiss())
    page.goto(sink.url)
    page.get_by_role("button", name="Delete all").click()
    expect(rows(page)).to_have_count(1)
    assert len(sink.messages()) == 1


def test_new_mail_notice_without_reloading(sink, page):
    deliver(sink, mail("First"))
    page.goto(sink.url)
    page.get_by_label("Search").fill("typing, not to be lost")
    deliver(sink, mail("Second"))
    notice = page.get_by_role("link", name="1 new message: reload")
    expect(notice).to_be_visible(timeout=10_000)
    expect(page.get_by_label("Search")).to_have_value("typing, not to be lost")  # the page did not reload
    notice.click()
    expect(rows(page)).to_have_count(2)


def test_no_critical_accessibility_violations(sink, page):
    message = mail("Accessible", html="<p>Hello</p>")
    message.add_attachment(b"a,b\r\n1,2\r\n", maintype="text", subtype="csv", filename="data.csv")
    msg = deliver(sink, message)
    page.goto(sink.url)
    assert axe_violations(page, impact=("critical", "serious")) == []
    page.goto(f"{sink.url}/view/{msg['id']}")
    assert axe_violations(page, impact=("critical", "serious")) == []
    page.goto(f"{sink.url}/?q=nothing")
    assert axe_violations(page, impact=("critical", "serious")) == []


def test_foreign_host_and_cross_origin_forms_are_refused(sink):
    msg = deliver(sink, mail("Private"))
    # DNS rebinding: a page at evil.test whose name now points at 127.0.0.1.
    rebound = requests.get(f"{sink.url}/view/{msg['id']}/raw", headers={"Host": "evil.test"}, timeout=5)
    assert rebound.status_code == 403 and b"Private" not in rebound.content
    assert requests.get(f"{sink.url}/messages", headers={"Host": "evil.test:80"}, timeout=5).status_code == 403
    assert requests.get(f"{sink.url}/messages", headers={"Host": "[::1"}, timeout=5).status_code == 403
    # Another site's form posting to the sink.
    for path in ("/delete-all", f"/view/{msg['id']}/delete"):
        reply = requests.post(sink.url + path, headers={"Origin": "http://evil.test"}, timeout=5)
        assert reply.status_code == 403
    assert requests.delete(f"{sink.url}/messages", headers={"Origin": "http://evil.test"}, timeout=5).status_code == 403
    assert [m["id"] for m in sink.messages()] == [msg["id"]]
    # The sink's own origin, by any loopback name, is fine.
    assert requests.get(f"{sink.url.replace('127.0.0.1', 'localhost')}/stats", timeout=5).ok
    same = requests.post(f"{sink.url}/view/{msg['id']}/delete", headers={"Origin": sink.url},
                         allow_redirects=False, timeout=5)
    assert same.status_code == 303 and sink.messages() == []


def test_view_of_unknown_message_is_404(sink):
    for path in ("/view/999", "/view/999/html", "/view/999/raw", "/view/999/attachments/0", "/view/x"):
        assert requests.get(sink.url + path, timeout=5).status_code == 404
    assert requests.post(sink.url + "/view/999/delete", timeout=5).status_code == 404
    for path in ("/view/\xb2", "/messages/\xb2"):  # a raw byte: "²" to the server, a digit to str.isdigit()
        with socket.create_connection(("127.0.0.1", sink.http_port), timeout=5) as conn:
            conn.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode("latin-1"))
            assert conn.recv(100).startswith(b"HTTP/1.0 404 ")
    for path in ("/static/../sink.py", "/static/sink.py", "/static/nope.css"):
        assert requests.get(sink.url + path, timeout=5).status_code == 404
    assert requests.get(sink.url + "/static/sink.css", timeout=5).headers["Content-Type"].startswith("text/css")
