"""The logs page's live tail in a real browser: a message sent through the API appears as a row at the
top of the table within seconds, without reloading the page."""

from __future__ import annotations

import base64
import urllib.parse
import urllib.request

from tests.support.browser import critical_violations as critical
from tests.support.dashboard import sign_in, user_of

MAIL_HTML = "<p>Hello <b>framed</b></p><script>document.body.textContent = 'script ran'</script>"


def send(live_url: str, api_key: str, domain: str, subject: str) -> None:
    body = urllib.parse.urlencode({"from": f"s@{domain}", "to": "live@dest.test", "subject": subject,
                                   "text": "hello", "html": MAIL_HTML}).encode()
    request = urllib.request.Request(f"{live_url}/v3/{domain}/messages", data=body, headers={
        "Authorization": "Basic " + base64.b64encode(f"api:{api_key}".encode()).decode(),
        "Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200


def test_a_sent_message_appears_in_the_live_tail_without_a_reload(page, live_url, services, account, domain,
                                                                  api_key):
    sign_in(page, live_url, *user_of(services, account, "analyst"))
    page.click("nav.side >> text=Logs")  # the account's only domain is the one shown
    page.wait_for_selector(f"#domain option[selected]:has-text('{domain['name']}')", state="attached")
    page.evaluate("window.__notReloaded = true")
    page.click("#live-toggle")
    page.wait_for_selector("#live-status:has-text('Live')", timeout=10_000)
    send(live_url, api_key, domain["name"], "Seen live <b>not bold</b>")
    row = page.locator("#events tbody tr.live").first
    row.wait_for(timeout=8_000)
    assert "Seen live <b>not bold</b>" in row.inner_text()  # text, never markup
    assert row.locator("b").count() == 0
    assert "accepted" in row.locator(".badge").first.inner_text()
    link = row.locator("a").first.get_attribute("href")
    assert link.startswith(f"/dashboard/domains/{domain['name']}/messages/")
    assert page.evaluate("window.__notReloaded") is True
    assert critical(page) == []
    page.click("#live-toggle")  # off: the stream is closed
    assert page.get_attribute("#live-toggle", "aria-pressed") == "false"
    row.locator("a").first.click()  # the message page: its trace, its content
    page.wait_for_selector("h2:has-text('Delivery')")
    assert "live@dest.test" in page.inner_text("section.recipient")
    frame = page.frame_locator("iframe.mail")
    assert frame.locator("b").inner_text(timeout=5_000) == "framed"  # shown, in its sandbox
    assert "script ran" not in frame.locator("body").inner_text()  # its script did not run
    assert critical(page) == []
