"""Tracking: settings API, rendered links/pixel/unsubscribe headers (DKIM-covered), hits and one-click."""

from __future__ import annotations

import email
import email.policy
import re
import secrets
from urllib.parse import urlencode, urlsplit

import dkim
from falcon import testing

from envoi.api.app import create_app
from envoi.mta.tracking import Tracking, _unb64
from tests.conftest import basic
from tests.support.delivery import events_of, send
from tests.support.relay import wait_until

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.0 Mobile/15E148 Safari/604.1")
HTML = '<html><body><p>Hi</p><a href="https://shop.example/item?id=7&amp;ref=mail">buy</a></body></html>'


def put(client, path, key, **params):
    return client.simulate_put(path, body=urlencode(params), headers={**FORM, **basic(key)})


def stored(services, db, message_id):
    rows = db.execute("SELECT m.body, m.storage_key, r.address FROM messages m JOIN recipients r ON r.message_pk = m.id"
                      " WHERE m.message_id = %s ORDER BY r.address", (message_id,)).fetchall()
    return {r["address"]: email.message_from_bytes(services.sealer.open(r["body"], r["storage_key"].encode()),
                                                   policy=email.policy.default) for r in rows}


def html_of(msg) -> str:
    return msg.get_body(("html",)).get_content()


def path_of(url: str) -> str:
    return urlsplit(url).path


def test_settings_api(client, domain, api_key, db):
    base = f"/v3/domains/{domain['name']}/tracking"
    got = client.simulate_get(base, headers=basic(api_key)).json["tracking"]
    assert got["open"] == {"active": False} and got["click"] == {"active": False}
    assert got["unsubscribe"]["active"] is False
    assert put(client, f"{base}/open", api_key, active="maybe").status_code == 400
    assert db.execute("SELECT count(*) AS n FROM tracking_settings WHERE domain_id = %s",
                      (domain["id"],)).fetchone()["n"] == 0
    resp = put(client, f"{base}/click", api_key, active="htmlonly")
    assert resp.json == {"message": "Domain tracking settings have been updated", "click": {"active": "htmlonly"}}
    resp = put(client, f"{base}/unsubscribe", api_key, active="yes", html_footer="<a href='%unsubscribe_url%'>bye</a>",
               text_footer="bye: %unsubscribe_url%")
    assert resp.json["unsubscribe"] == {"active": True, "html_footer": "<a href='%unsubscribe_url%'>bye</a>",
                                        "text_footer": "bye: %unsubscribe_url%"}
    assert client.simulate_get(base, headers=basic(api_key)).json["tracking"]["click"] == {"active": "htmlonly"}


def test_tracked_mail_end_to_end(client, services, account, domain, api_key, db, sink, relay):  # noqa: F811
    base = f"/v3/domains/{domain['name']}/tracking"
    for kind in ("open", "click", "unsubscribe"):
        assert put(client, f"{base}/{kind}", api_key, active="yes").status_code == 200
    message_id = send(services, account["id"], domain, "ann@dest.test, bob@dest.test", html=HTML,
                      text="see https://shop.example/t")
    # Per-recipient links: the copy for two recipients was split into one copy each.
    received = wait_until(lambda: (got := {m["rcpt_tos"][0]: m for m in sink.messages() if message_id in m["data"]})
                          and len(got) == 2 and got)
    assert set(received) == {"ann@dest.test", "bob@dest.test"}
    raw = received["ann@dest.test"]["data"].encode("utf-8", "surrogateescape")

    def dnsfunc(name, timeout=5):
        return f"v=DKIM1; k=rsa; p={domain['dkim_public_key']}".encode()

    assert dkim.verify(raw, dnsfunc=dnsfunc)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    signed = msg["DKIM-Signature"].replace("\r\n", "").replace(" ", "").replace("\t", "")
    h = re.search(r"h=([^;]+)", signed).group(1).lower().split(":")
    assert "list-unsubscribe" in h and "list-unsubscribe-post" in h
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https_unsub, mailto_unsub = re.findall(r"<([^>]+)>", msg["List-Unsubscribe"])
    # Every link is on the domain's tracking host (web_prefix "email", web_scheme "http"), not the API's.
    host = f"email.{domain['name']}"
    assert https_unsub.startswith(f"http://{host}/u/") and mailto_unsub.startswith("mailto:")

    body = html_of(msg)
    links = re.findall(r'(?:href|src)="([^"]+)"', body)
    assert len(links) == 3 and all(link.startswith(f"http://{host}/") for link in links), links
    [click_url] = re.findall(rf'href="(http://{re.escape(host)}/c/[^"]+)"', body)
    [pixel_url] = re.findall(rf'src="(http://{re.escape(host)}/o/[^"]+)"', body)
    assert "shop.example" not in body.split("To unsubscribe")[0]  # the link is rewritten
    text = msg.get_body(("plain",)).get_content()
    assert f"http://{host}/c/" in text and f"http://{host}/u/" in text and "127.0.0.1" not in text

    # Click, as the browser sends it to the tracking host: redirect to the original URL and a `clicked`
    # event with the url and client-info.
    resp = client.simulate_get(path_of(click_url), headers={"User-Agent": IPHONE}, host=host)
    assert resp.status_code == 302 and resp.headers["location"] == "https://shop.example/item?id=7&ref=mail"
    resp = client.simulate_get(path_of(pixel_url), headers={"User-Agent": IPHONE}, host=host)
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/gif"
    events = {e["event"]: e["data"] for e in events_of(db, message_id) if e["data"].get("recipient") == "ann@dest.test"}
    assert events["clicked"]["url"] == "https://shop.example/item?id=7&ref=mail"
    info = events["clicked"]["client-info"]
    assert info["client-os"] == "iOS" and info["device-type"] == "mobile" and info["user-agent"] == IPHONE
    assert events["opened"]["client-info"]["client-name"] == "Mobile Safari"

    # The unsubscribe page asks first (a link scanner's GET changes nothing) ...
    page = client.simulate_get(path_of(https_unsub), host=host)
    assert page.status_code == 200 and "<form" in page.text
    assert db.execute("SELECT count(*) AS n FROM suppress_unsubscribes WHERE domain_id = %s",
                      (domain["id"],)).fetchone()["n"] == 0
    # ... and the RFC 8058 one-click POST (no cookie, no auth) suppresses before answering.
    resp = client.simulate_post(path_of(https_unsub), body="List-Unsubscribe=One-Click", headers=FORM, host=host)
    assert resp.status_code == 200
    assert [(i["address"], i["tags"]) for i in services.suppressions.export(domain, "unsubscribes")] == [
        ("ann@dest.test", ["*"])]
    assert any(e["event"] == "unsubscribed" and e["data"]["recipient"] == "ann@dest.test"
               for e in events_of(db, message_id))
    # The next send to her is not sent, and says why.
    before = len(sink.messages(to="ann@dest.test"))
    next_id = send(services, account["id"], domain, "ann@dest.test")
    events = wait_until(lambda: (e := events_of(db, next_id)) and len(e) == 2 and e)
    assert events[1]["data"]["reason"] == "suppress-unsubscribe"
    assert len(sink.messages(to="ann@dest.test")) == before


def test_forged_tokens_get_4xx_and_record_nothing(client, services, settings, account, domain, db):
    tracking = services.tracking
    message_id = send(services, account["id"], domain, "eve@dest.test", o_testmode="yes")
    ids = (account["id"], domain["id"], message_id, "eve@dest.test")
    good = tracking.sign("c", *ids, "https://ok.example/")
    evil = Tracking(services.db, services.events, secrets.token_bytes(32), settings.public_url)
    assert "eve" not in _unb64(good).decode("latin-1") and "ok.example" not in _unb64(good).decode("latin-1")
    forged = [
        good[:40] + ("A" if good[40] != "A" else "B") + good[41:],  # tampered
        evil.sign("c", *ids, "https://evil.example/"),  # signed with another key
        tracking.sign("o", *ids),  # an open token used as a click
        tracking.sign("c", *ids, "javascript:alert(1)"),  # never a redirect to a non-web URL
        tracking.sign("c", account["id"] + 1, domain["id"], message_id, "eve@dest.test", "https://x.example/"),
        "nonsense",
    ]
    # From an address of its own: forged tokens count per client address for a minute, and other tests
    # forge plenty from the in-process client's default 127.0.0.1 (tests/integration/api/test_hostile_input.py).
    peer = "192.0.2.47"
    for token in forged:
        resp = client.simulate_get(f"/c/{token}", remote_addr=peer)
        assert 400 <= resp.status_code < 500 and "location" not in resp.headers, token
    assert client.simulate_get(f"/o/{forged[0]}", remote_addr=peer).status_code == 404
    assert client.simulate_post(f"/u/{forged[0]}", remote_addr=peer).status_code == 404
    assert [e["event"] for e in events_of(db, message_id)] == ["accepted"]
    assert client.simulate_get(f"/c/{good}").headers["location"] == "https://ok.example/"


def test_per_message_options_and_placeholders(client, services, account, domain, api_key, db):
    base = f"/v3/domains/{domain['name']}/tracking"
    put(client, f"{base}/click", api_key, active="yes")
    # o:tracking-clicks=no wins over the domain setting; %unsubscribe_url% still works without the footer.
    message_id = send(services, account["id"], domain, "pat@dest.test", html=HTML.replace(
        "</p>", ' <a href="%tag_unsubscribe_url%">stop news</a></p>'), o_tag="news", o_testmode="yes",
        **{"o_tracking-clicks": "no"})
    msg = stored(services, db, message_id)["pat@dest.test"]
    body = html_of(msg)
    assert 'href="https://shop.example/item?id=7&amp;ref=mail"' in body and "/c/" not in body
    [unsub] = re.findall(rf'href="(http://email\.{re.escape(domain["name"])}/u/[^"]+)"', body)
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    client.simulate_post(path_of(unsub), body="List-Unsubscribe=One-Click", headers=FORM)
    with services.db.transaction() as conn:
        blocked = services.suppressions.blocked(conn, [(account["id"], domain["id"], "pat@dest.test", ["news"]),
                                                       (account["id"], domain["id"], "pat@dest.test", ["other"])])
    assert blocked == ["suppress-unsubscribe", None]  # the tag link unsubscribes from that tag only

    # Nothing active and no placeholder: the message is stored exactly as composed (one copy, no headers).
    put(client, f"{base}/click", api_key, active="no")
    message_id = send(services, account["id"], domain, "a@dest.test, b@dest.test", html=HTML,
                      o_testmode="yes")
    copies = stored(services, db, message_id)
    assert db.execute("SELECT count(*) AS n FROM messages WHERE message_id = %s", (message_id,)).fetchone()["n"] == 1
    assert "List-Unsubscribe" not in copies["a@dest.test"]


def test_forged_tokens_are_turned_away_but_never_a_genuine_hit(client, services, account, domain, db):
    message_id = send(services, account["id"], domain, "kim@dest.test", o_testmode="yes")
    ids = (account["id"], domain["id"], message_id, "kim@dest.test")
    good = services.tracking.sign("c", *ids, "https://ok.example/")
    replies = [client.simulate_get(f"/c/x{n}.y", remote_addr="10.9.9.9").status_code for n in range(50)]
    assert replies == [404] * 30 + [429] * 20  # only forged tokens are counted, and only they refused
    resp = client.simulate_get(f"/c/{good}", remote_addr="10.9.9.9")  # a real reader behind the same address
    assert resp.status_code == 302 and resp.headers["location"] == "https://ok.example/"
    assert client.simulate_get(f"/o/{services.tracking.sign('o', *ids)}", remote_addr="10.9.9.9").status_code == 200
    unsub = services.tracking.sign("u", *ids)
    assert client.simulate_get(f"/u/{unsub}", remote_addr="10.9.9.9").status_code == 200  # the confirmation page
    resp = client.simulate_post(f"/u/{unsub}", body="List-Unsubscribe=One-Click", headers=FORM,
                                remote_addr="10.9.9.9")  # RFC 8058 one-click, as a mailbox provider sends it
    assert resp.status_code == 200
    assert client.simulate_get(f"/c/{good}", remote_addr="10.9.9.8").status_code == 302  # others unaffected
    events = events_of(db, message_id)
    assert [e["event"] for e in events] == ["accepted", "clicked", "opened", "unsubscribed", "clicked"]
    assert events[1]["data"]["ip"] == "10.9.9.9"
    with services.db.transaction() as conn:
        assert services.suppressions.blocked(conn, [(account["id"], domain["id"], "kim@dest.test", [])]) == \
            ["suppress-unsubscribe"]


def test_a_trusted_proxy_forwards_the_client_address(services, settings, account, domain, db):
    proxied = testing.TestClient(create_app(settings.replace(trusted_proxies=("10.77.0.0/16",)), services))
    message_id = send(services, account["id"], domain, "lou@dest.test", o_testmode="yes")
    good = services.tracking.sign("c", account["id"], domain["id"], message_id, "lou@dest.test", "https://ok.example/")

    def click(token, peer, forwarded=None):
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        return proxied.simulate_get(f"/c/{token}", remote_addr=peer, headers=headers).status_code

    # Through the proxy: the forwarded client is limited, not the proxy (its other clients go on), and the
    # right-most untrusted hop counts, whatever the client wrote to its left.
    assert [click(f"f{n}.x", "10.77.0.5", f"1.2.3.{n}, 203.0.113.7, 10.77.0.9") for n in range(31)] == \
        [404] * 30 + [429]
    assert click("g.x", "10.77.0.5", "203.0.113.8") == 404
    assert click(good, "10.77.0.5", "203.0.113.7") == 302
    assert events_of(db, message_id)[-1]["data"]["ip"] == "203.0.113.7"
    # An untrusted peer's X-Forwarded-For is ignored: it can neither pose as another client nor spread its
    # forgeries over made-up addresses.
    assert click("h.x", "198.51.100.9", "203.0.113.7") == 404
    assert [click(f"s{n}.x", "198.51.100.9", f"192.0.2.{n}") for n in range(30)] == [404] * 29 + [429]
    assert click(good, "198.51.100.9", "203.0.113.99") == 302
    assert events_of(db, message_id)[-1]["data"]["ip"] == "198.51.100.9"
