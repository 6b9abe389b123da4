"""Logs: the events search with the API's filters and paging tokens, the live tail (SSE), and the message
page (delivery trace, headers, text, sandboxed HTML, attachments), over real sends and real deliveries."""

from __future__ import annotations

import html
import json
import re
import threading
import time
from datetime import UTC, datetime

import pytest

from envoi.api.dashboard import security
from envoi.api.dashboard.pages.logs import message_path
from envoi.events.errors import TooManyStreams
from tests.conftest import basic
from tests.support.api import accepted, multipart, send_form
from tests.support.events import record
from tests.support.relay import wait_until

ROW = re.compile(r'<tr data-event-id="([^"]*)">(.*?)</tr>', re.S)


def rows(page_html: str) -> list[dict]:
    """The events table's rows: id, event (badge), text (the cells' text)."""
    out = []
    for event_id, cells in ROW.findall(page_html):
        text = html.unescape(re.sub(r"<[^>]+>", " ", cells))
        out.append({"id": event_id, "event": re.search(r'class="badge (\w+)', cells).group(1),
                    "text": " ".join(text.split())})
    return out


def link(page_html: str, rel: str) -> str | None:
    found = re.search(rf'<a href="([^"]+)" rel="{rel}">', page_html)
    return html.unescape(found.group(1)) if found else None


def follow(page, url: str):
    path, _, query = url.partition("?")
    return page.client.simulate_get(path, query_string=query, cookies=page.cookies)


def delivered(db, message_id: str):
    return wait_until(lambda: db.execute("SELECT data FROM events WHERE message_id = %s AND event = 'delivered'",
                                         (message_id,)).fetchone(), 20)


def local(epoch: float) -> str:
    """A datetime-local input's value (UTC) for an epoch."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S")


# the search --------------------------------------------------------------------------------------
def test_accepted_and_delivered_events_are_listed_with_their_subject_and_the_event_filter_narrows(
        client, api_key, domain, db, relay, page_as):
    sent = accepted(send_form(client, api_key, domain, subject="Quarterly report", **{"o:tag": "reports"}))
    delivered(db, sent.message_id)
    page = page_as("analyst")
    listed = rows(page.get("/dashboard/logs", domain=domain["name"]).text)
    assert [r["event"] for r in listed] == ["delivered", "accepted"]  # newest first
    for row in listed:
        assert "Quarterly report" in row["text"] and "rcpt@dest.test" in row["text"] and "reports" in row["text"]
    assert "250" in listed[0]["text"]  # the delivery's reply code
    only = rows(page.get("/dashboard/logs", domain=domain["name"], event="delivered").text)
    assert [r["event"] for r in only] == ["delivered"]
    either = rows(page.get("/dashboard/logs", domain=domain["name"], event="delivered OR accepted").text)
    assert len(either) == 2
    # each row leads to the message page
    assert f'href="{message_path(domain["name"], sent.message_id)}"' in page.get(
        "/dashboard/logs", domain=domain["name"]).text


def test_each_filter_narrows_the_results_as_the_api_does(client, api_key, domain, page_as):
    sends = [("Invoice 1001", "ann@dest.test", "billing"), ("Welcome aboard", "bob@dest.test", "onboarding"),
             ("Invoice 1002", "cid@dest.test", "billing")]
    ids = {}
    for subject, to, tag in sends:
        ids[subject] = accepted(send_form(client, api_key, domain, subject=subject, to=to,
                                          **{"o:tag": tag})).message_id
    page = page_as("support")

    def subjects(**filters) -> set[str]:
        found = set()
        for row in rows(page.get("/dashboard/logs", domain=domain["name"], **filters).text):
            found |= {s for s, _, _ in sends if s in row["text"]}
        return found

    assert subjects() == {"Invoice 1001", "Welcome aboard", "Invoice 1002"}
    assert subjects(subject="Invoice") == {"Invoice 1001", "Invoice 1002"}
    assert subjects(subject='"Welcome aboard"') == {"Welcome aboard"}
    assert subjects(recipient="bob@dest.test") == {"Welcome aboard"}
    assert subjects(tags="billing") == {"Invoice 1001", "Invoice 1002"}
    assert subjects(tags="billing", recipient="cid@dest.test") == {"Invoice 1002"}
    assert subjects(**{"message-id": ids["Invoice 1001"]}) == {"Invoice 1001"}
    assert subjects(**{"from": f"s@{domain['name']}"}) == {"Invoice 1001", "Welcome aboard", "Invoice 1002"}
    assert subjects(severity="permanent") == set()
    assert subjects(event="failed") == set()
    # the same filters through the API give the same events
    api = client.simulate_get(f"/v3/{domain['name']}/events", params={"tags": "billing"}, headers=basic(api_key))
    assert {i["message"]["headers"]["subject"] for i in api.json["items"]} == {"Invoice 1001", "Invoice 1002"}


def test_begin_and_end_from_the_date_boxes_bound_the_time_range(services, domain, page_as):
    now = time.time()
    old = record(services, domain, "delivered", subject="Old news", ts=now - 5 * 3600)
    new = record(services, domain, "delivered", subject="Fresh news", ts=now - 60)
    page = page_as("analyst")
    cut = local(now - 2 * 3600)
    after = rows(page.get("/dashboard/logs", domain=domain["name"], begin=cut).text)
    assert [r["id"] for r in after] == [new["id"]]
    before = rows(page.get("/dashboard/logs", domain=domain["name"], end=cut).text)
    assert [r["id"] for r in before] == [old["id"]]
    both = rows(page.get("/dashboard/logs", domain=domain["name"], begin=local(now - 6 * 3600), end=cut).text)
    assert [r["id"] for r in both] == [old["id"]]
    shown = page.get("/dashboard/logs", domain=domain["name"], begin=cut).text
    assert f'name="begin" type="datetime-local" step="1" value="{cut}"' in shown  # the box keeps its value


def test_paging_follows_the_services_tokens_without_duplicates(client, api_key, domain, page_as):
    for n in range(5):
        accepted(send_form(client, api_key, domain, subject=f"Page test {n}"))
    page = page_as("analyst")
    first = page.get("/dashboard/logs", domain=domain["name"], limit="2")
    assert link(first.text, "prev") is None  # nothing before the first page
    pages, seen, current = [], [], first
    while True:
        got = [r["id"] for r in rows(current.text)]
        if not got:
            break
        pages.append(got)
        seen += got
        current = follow(page, link(current.text, "next"))
        assert current.status_code == 200
    assert [len(p) for p in pages] == [2, 2, 1] and len(set(seen)) == 5
    # the links carry the service's own tokens: the same token through the API gives the same page
    second = follow(page, link(first.text, "next"))
    token = re.search(r"page=([^&]+)", link(first.text, "next")).group(1)
    api = client.simulate_get(f"/v3/{domain['name']}/events/{token}", headers=basic(api_key))
    assert [i["id"] for i in api.json["items"]] == pages[1] == [r["id"] for r in rows(second.text)]
    back = follow(page, link(second.text, "prev"))
    assert [r["id"] for r in rows(back.text)] == pages[0]
    assert 'value="2"' in second.text  # the form keeps its limit across pages


@pytest.mark.parametrize("params", [{"event": "(delivered"}, {"limit": "0"}, {"limit": "many"},
                                    {"begin": "yesterday-ish"}, {"ascending": "maybe"},
                                    {"size": ">lots"}, {"tags": "x" * 1001}])
def test_a_bad_filter_gets_the_apis_message_and_a_400_page(client, api_key, domain, page_as, params):
    api = client.simulate_get(f"/v3/{domain['name']}/events", params=params, headers=basic(api_key))
    assert api.status_code == 400
    resp = page_as("analyst").get("/dashboard/logs", domain=domain["name"], **params)
    assert resp.status_code == 400 and resp.content_type.startswith("text/html")
    error = re.search(r'<p class="error" role="alert">(.*?)</p>', resp.text, re.S).group(1)
    assert html.unescape(error) == api.json["message"]
    assert 'id="f-event"' in resp.text and "Sign out" in resp.text  # the page still works around it
    assert 'id="live-toggle"' not in resp.text  # no live tail of a query that does not parse


def test_a_forged_page_token_is_a_400_with_the_apis_message(domain, page_as):
    resp = page_as("analyst").get("/dashboard/logs", domain=domain["name"], page="eyJxIjp7fX0")
    assert resp.status_code == 400 and "invalid page token" in resp.text


def test_an_account_without_domains_gets_an_empty_page(services, page_as):
    lonely = services.accounts.create_account("lonely")
    resp = page_as("admin", of=lonely).get("/dashboard/logs")
    assert resp.status_code == 200 and "no domain yet" in resp.text


# the message page --------------------------------------------------------------------------------
MAIL_HTML = ("<p>Hello <b>there</b></p><script>document.title='pwned-by-mail'</script>"
             "<img src=\"https://tracker.example/pixel.png\" alt=\"\">")


def test_the_message_page_shows_the_trace_with_mx_tls_and_reply(client, api_key, domain, db, relay, page_as):
    sent = accepted(send_form(client, api_key, domain, subject="Traced", text="plain words here"))
    event = delivered(db, sent.message_id)["data"]
    status = event["delivery-status"]
    resp = page_as("support").get(message_path(domain["name"], sent.message_id))
    assert resp.status_code == 200
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", resp.text)).split())
    assert "rcpt@dest.test delivered" in text
    assert f"MX host {status['mx-host']}" in text and status["mx-host"] == "mx.dest.test"
    assert "TLS no" in text and status["tls"] is False  # the loopback sink offers no STARTTLS
    assert f"Reply {status['code']}" in text and status["code"] == 250
    assert status["message"] and status["message"] in text
    assert "plain words here" in text  # the stored text part
    assert re.search(r"<td class=\"mono\">Subject</td><td class=\"mono\">Traced</td>", resp.text)  # headers


def test_a_retried_delivery_shows_both_attempts_in_order(client, api_key, domain, db, sink, relay, page_as):
    sink.set_script({"data": ["451 4.3.0 Try again later"]})  # once, then accepted
    sent = accepted(send_form(client, api_key, domain, subject="Second time lucky"))
    delivered(db, sent.message_id)
    resp = page_as("analyst").get(message_path(domain["name"], sent.message_id))
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", resp.text)).split())
    failed_at, delivered_at = text.index("failed (temporary), attempt 1"), text.index("delivered, attempt 2")
    assert failed_at < delivered_at
    assert "Reply451 4.3.0 Try again later" in text[failed_at:delivered_at]  # <dt>Reply</dt><dd>451 …
    assert "Reply250" in text[delivered_at:]


def test_mail_html_only_in_a_sandboxed_frame_under_the_sandbox_policy(client, api_key, domain, page_as):
    sent = accepted(send_form(client, api_key, domain, subject="Has HTML", html=MAIL_HTML))
    page = page_as("analyst")
    base = message_path(domain["name"], sent.message_id)
    resp = page.get(base)
    assert resp.status_code == 200 and resp.headers["content-security-policy"] == security.PAGE_POLICY
    assert "pwned-by-mail" not in resp.text and "tracker.example" not in resp.text  # never in the page itself
    [frame] = re.findall(r"<iframe[^>]*>", resp.text)
    assert re.search(r"\bsandbox(?=[\s>])", frame) and "allow-" not in frame
    assert f'src="{base}/html"' in frame
    body = page.get(base + "/html")
    assert body.status_code == 200 and body.headers["content-security-policy"] == security.MAIL_HTML_POLICY
    assert body.headers["content-security-policy"].startswith("sandbox")
    assert "https:" not in body.headers["content-security-policy"]  # remote images off
    assert body.text.strip() == "<p>Hello <b>there</b></p><script>document.title='pwned-by-mail'</script>" \
        '<img src="https://tracker.example/pixel.png" alt="">'
    asked = page.get(base, images="1")
    assert f'src="{base}/html?images=1"' in asked.text
    images = page.get(base + "/html", images="1")
    assert images.headers["content-security-policy"] == security.MAIL_HTML_POLICY_IMAGES
    assert 'href="' + base + '?images=1"' in resp.text  # the "Show remote images" link


def test_attachments_download_with_their_exact_bytes(client, api_key, domain, page_as):
    data = bytes(range(256)) * 40
    body, ctype = multipart({"from": f"s@{domain['name']}", "to": "rcpt@dest.test", "subject": "Files",
                             "text": "see attached"}.items(),
                            files=[("attachment", "report.bin", "application/octet-stream", data),
                                   ("attachment", "note.html", "text/html", b"<script>alert(1)</script>")])
    resp = client.simulate_post(f"/v3/{domain['name']}/messages", body=body,
                                headers={"Content-Type": ctype, **basic(api_key)})
    sent = accepted(resp)
    page = page_as("analyst")
    base = message_path(domain["name"], sent.message_id)
    listing = page.get(base).text
    assert f'href="{base}/attachments/0" download>report.bin' in listing and "note.html" in listing
    got = page.get(base + "/attachments/0")
    assert got.status_code == 200 and got.content == data
    assert got.headers["content-disposition"].startswith('attachment; filename="report.bin"')
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-type"] == "application/octet-stream"
    html_file = page.get(base + "/attachments/1")
    assert html_file.content == b"<script>alert(1)</script>"
    assert html_file.headers["content-type"] == "application/octet-stream"  # never rendered as a page
    assert page.get(base + "/attachments/2").status_code == 404
    assert page.get(base + "/attachments/-1").status_code == 404


def test_an_unknown_message_is_a_404_page(domain, page_as):
    page = page_as("analyst")
    for path in ("", "/html", "/attachments/0"):
        resp = page.get(message_path(domain["name"], "nope@nowhere") + path)
        assert resp.status_code == 404 and "Message not found" in resp.text


# who may see it -----------------------------------------------------------------------------------
def test_another_accounts_user_gets_404_everywhere_and_sees_nothing(client, services, api_key, domain, page_as):
    sent = accepted(send_form(client, api_key, domain, subject="Secret plans", html="<p>secret html</p>",
                              attachment="x"))
    token_page = page_as("admin").get("/dashboard/logs", domain=domain["name"], limit="1")
    next_url = link(token_page.text, "next")
    stranger = page_as("admin", of=services.accounts.create_account("stranger"))
    base = message_path(domain["name"], sent.message_id)
    for path, params in (("/dashboard/logs", {"domain": domain["name"]}),
                         (next_url.partition("?")[0], dict(p.split("=", 1) for p in next_url.partition("?")[2].split("&"))),
                         (base, {}), (base + "/html", {}), (base + "/attachments/0", {}),
                         ("/dashboard/logs/live", {"domain": domain["name"], "timeout": "1"})):
        resp = stranger.get(path, **params)
        assert resp.status_code == 404, path
        assert "Secret plans" not in resp.text and "secret html" not in resp.text


def test_a_billing_user_may_not_read_logs(client, api_key, domain, page_as):
    sent = accepted(send_form(client, api_key, domain, subject="Not for billing"))
    page = page_as("billing")
    base = message_path(domain["name"], sent.message_id)
    for path, params in (("/dashboard/logs", {"domain": domain["name"]}), (base, {}), (base + "/html", {}),
                         ("/dashboard/logs/live", {"timeout": "1"})):
        resp = page.get(path, **params)
        assert resp.status_code == 403 and "may not read logs" in resp.text, path
        assert "Not for billing" not in resp.text


def test_the_pages_carry_the_strict_policy_and_no_inline_script(client, api_key, domain, page_as):
    sent = accepted(send_form(client, api_key, domain, subject="Policy", html="<p>x</p>"))
    page = page_as("admin")
    for path in ("/dashboard/logs", message_path(domain["name"], sent.message_id)):
        resp = page.get(path, domain=domain["name"]) if path == "/dashboard/logs" else page.get(path)
        assert resp.headers["content-security-policy"] == security.PAGE_POLICY, path
        assert not re.search(r"<script(?![^>]*\bsrc=)", resp.text) and " style=" not in resp.text
        assert not re.search(r"\son[a-z]+=", resp.text), path


# the live tail -----------------------------------------------------------------------------------
def later(delay: float, fn) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), fn()), daemon=True)
    thread.start()
    return thread


def sse_events(text: str) -> list[tuple[str, str]]:
    """(id, data) of each SSE message carrying data."""
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "data" in fields:
            out.append((fields.get("id", ""), fields["data"]))
    return out


def test_the_live_route_streams_recorded_events_and_resumes_from_last_event_id(services, domain, page_as):
    page = page_as("analyst")
    first = {}
    thread = later(0.5, lambda: first.update(record(services, domain, "delivered", subject="Live one")))
    resp = page.get("/dashboard/logs/live", domain=domain["name"], timeout="2.5")
    thread.join()
    assert resp.status_code == 200 and resp.headers["content-type"] == "text/event-stream"
    got = sse_events(resp.text)
    assert [first["id"]] == [json.loads(d)["id"] for _, d in got]
    last_id = got[0][0]
    second = record(services, domain, "accepted", subject="While away")
    time.sleep(0.3)  # the publisher thread hands it to Redis
    resumed = page.client.simulate_get("/dashboard/logs/live", params={"domain": domain["name"], "timeout": "1"},
                                       cookies=page.cookies, headers={"Last-Event-ID": last_id})
    assert [json.loads(d)["id"] for _, d in sse_events(resumed.text)] == [second["id"]]


def test_the_live_route_applies_the_filters_and_serves_every_domain_of_the_account(services, account, domain,
                                                                                   page_as):
    other = services.accounts.add_domain(account["id"], f"second-{domain['name']}", dkim_key_size=1024,
                                         verified=True)
    page = page_as("analyst")

    def burst():
        record(services, domain, "opened", subject="Skip me")
        record(services, other, "delivered", subject="Keep me")

    thread = later(0.5, burst)
    resp = page.get("/dashboard/logs/live", event="delivered", timeout="2.5")  # no domain: the whole account
    thread.join()
    got = [json.loads(d) for _, d in sse_events(resp.text)]
    assert [(g["message"]["headers"]["subject"], g["domain"]["name"]) for g in got] == [("Keep me", other["name"])]


def test_a_bad_live_filter_is_a_400_with_the_apis_message(domain, page_as):
    resp = page_as("analyst").get("/dashboard/logs/live", domain=domain["name"], event="(x")
    assert resp.status_code == 400 and "invalid filter expression for &#39;event&#39;" in resp.text


def test_the_live_tail_counts_against_the_servers_stream_cap(services, account, domain, page_as):
    page = page_as("analyst")
    held = []
    try:
        while True:  # take every slot this process has, as API clients would
            try:
                held.append(services.stream.open(account["id"], domain_id=None, matches=lambda data: True,
                                                 last_event_id=None, max_seconds=1))
            except TooManyStreams:
                break
        resp = page.get("/dashboard/logs/live", domain=domain["name"], timeout="1")
        assert resp.status_code == 429 and "live streams" in resp.text
    finally:
        for body in held:
            body.close()
    assert page.get("/dashboard/logs/live", domain=domain["name"], timeout="0.5").status_code == 200
