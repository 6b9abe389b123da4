"""The dev/test sink over real loopback sockets, driven by aiosmtplib and smtplib clients."""

from __future__ import annotations

import asyncio
import signal
import smtplib
import ssl
import subprocess
import sys
import time

import aiosmtplib
import pytest
import requests
import trustme
from aiosmtpd.smtp import SMTP

from envoi.dev.sink import Sink
from envoi.mta.listener import Connection

RAW = b"From: a@sender.test\r\nTo: b@rcpt.test\r\nSubject: Hello\r\n\r\nBody line\r\n.leading dot\r\n8bit \xe9\xff\r\n"


@pytest.fixture
def sink():
    with Sink() as s:
        yield s


def asend(sink: Sink, recipients=("b@rcpt.test",), data: bytes = RAW, sender="a@sender.test", **kw):
    """Send one message with aiosmtplib; returns aiosmtplib's (per-recipient replies, final reply)."""
    kw.setdefault("start_tls", False)
    return asyncio.run(aiosmtplib.send(data, sender=sender, recipients=list(recipients),
                                       hostname="127.0.0.1", port=sink.smtp_port, **kw))


def test_stores_envelope_raw_data_and_peer(sink):
    asend(sink, ["b@rcpt.test", "c@rcpt.test"], local_hostname="client.test")
    [msg] = sink.wait_for(1)
    assert msg["id"] >= 1
    assert msg["mail_from"] == "a@sender.test"
    assert msg["rcpt_tos"] == ["b@rcpt.test", "c@rcpt.test"]
    assert msg["data"].encode("utf-8", "surrogateescape") == RAW  # exact bytes, dot-unstuffed
    assert msg["peer"] == "127.0.0.1"
    assert msg["helo"] == "client.test"
    assert msg["tls"] is False
    assert abs(msg["received_at"] - time.time()) < 10
    assert 0 < msg["connected_at"] <= msg["received_at"]
    assert sink.stats() == {"messages": 1, "recipients": 2, "attempts": 1, "sessions": 1, "stored": 1,
                            "per_peer": {"127.0.0.1": 1}}


def test_smtputf8_addresses(sink):
    asend(sink, ["jörg@exämple.test"], sender="über@sender.test", mail_options=["SMTPUTF8"])
    [msg] = sink.wait_for(1)
    assert (msg["mail_from"], msg["rcpt_tos"]) == ("über@sender.test", ["jörg@exämple.test"])


def test_null_sender(sink):
    with smtplib.SMTP("127.0.0.1", sink.smtp_port) as client:
        client.sendmail("", ["b@rcpt.test"], RAW)  # MAIL FROM:<>, as for a bounce
    assert sink.wait_for(1)[0]["mail_from"] == ""
    assert "&lt;&gt;" in requests.get(sink.url, timeout=5).text


def test_peer_is_the_clients_source_address(sink):
    with smtplib.SMTP("127.0.0.1", sink.smtp_port, source_address=("127.0.0.2", 0)) as client:
        client.sendmail("a@sender.test", ["b@rcpt.test"], RAW)
    asend(sink, source_address=("127.0.0.3", 0))
    assert [m["peer"] for m in sink.wait_for(2)] == ["127.0.0.2", "127.0.0.3"]
    assert sink.stats()["per_peer"] == {"127.0.0.2": 1, "127.0.0.3": 1}


def test_scripted_rcpt_replies(sink):
    sink.set_script({"rcpt": {"Nobody@rcpt.test": "550 5.1.1 No such user", "*@slow.test": "451 4.2.1 Try later"}})
    with smtplib.SMTP("127.0.0.1", sink.smtp_port) as client:
        refused = client.sendmail("a@sender.test", ["b@rcpt.test", "nobody@RCPT.test", "x@slow.test"], RAW)
        assert refused == {"nobody@RCPT.test": (550, b"5.1.1 No such user"),
                           "x@slow.test": (451, b"4.2.1 Try later")}
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("a@sender.test", ["nobody@rcpt.test"], RAW)
    [msg] = sink.wait_for(1)
    assert msg["rcpt_tos"] == ["b@rcpt.test"]
    assert sink.stats()["attempts"] == 1  # the all-refused transaction never reached DATA


def test_scripted_data_replies_in_order_then_default(sink):
    sink.set_script({"data": ["451 4.3.0 Try again", "250 2.0.0 Queued as X1"]})
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        asend(sink)
    assert refused.value.code == 451
    assert sink.messages() == []
    assert asend(sink)[1] == "2.0.0 Queued as X1"
    assert asend(sink)[1] == "2.0.0 OK"  # list exhausted: default_data
    assert len(sink.wait_for(2)) == 2
    assert sink.stats()["attempts"] == 3
    assert sink.stats()["messages"] == 2


def test_defer_forever(sink):
    sink.set_script({"default_data": "defer-forever"})
    for _ in range(3):
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            asend(sink)
        assert refused.value.code == 451
    assert sink.stats()["attempts"] == 3
    assert sink.messages() == []
    sink.reset_script()
    asend(sink)
    assert len(sink.wait_for(1)) == 1


def test_drop_closes_after_the_dot_without_reply_but_stores(sink):
    """The remote got the message but the sender never hears 250: the duplicate window."""
    sink.set_script({"data": ["drop"]})
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        asend(sink)
    [msg] = sink.wait_for(1)
    assert msg["data"].encode("utf-8", "surrogateescape") == RAW
    asend(sink)  # a retry on a new connection is accepted: now there are two copies
    assert len(sink.wait_for(2)) == 2


def test_data_delay(sink):
    sink.set_script({"data_delay": 0.5})
    started = time.monotonic()
    asend(sink)
    assert time.monotonic() - started >= 0.5


def test_bad_script_is_rejected(sink):
    for bad in ({"rcpt": {"a@b.test": "hello"}}, {"data": ["drop", "99 nope"]}, {"data_delay": -1},
                {"dat": []}, {"rcpt": {"a@b.test": "drop"}}):
        with pytest.raises(ValueError):
            sink.set_script(bad)
    assert sink.script()["data"] == []


def test_http_json_api(sink):
    asend(sink, ["one@rcpt.test"])
    asend(sink, ["two@rcpt.test"])
    first, second = sink.wait_for(2)

    body = requests.get(f"{sink.url}/messages", timeout=5).json()
    assert body["total"] == 2
    assert [m["id"] for m in body["items"]] == [first["id"], second["id"]]
    assert body["items"][0]["data"] == first["data"]  # surrogates survive JSON
    only = requests.get(f"{sink.url}/messages", params={"to": "TWO@rcpt.test"}, timeout=5).json()
    assert [m["id"] for m in only["items"]] == [second["id"]]
    since = requests.get(f"{sink.url}/messages", params={"since_id": first["id"]}, timeout=5).json()
    assert [m["id"] for m in since["items"]] == [second["id"]]
    assert requests.get(f"{sink.url}/messages", params={"since_id": "x"}, timeout=5).status_code == 400

    assert requests.get(f"{sink.url}/messages/{first['id']}", timeout=5).json() == first
    raw = requests.get(f"{sink.url}/messages/{first['id']}/raw", timeout=5)
    assert raw.headers["Content-Type"] == "message/rfc822"
    assert raw.content == RAW
    assert requests.get(f"{sink.url}/messages/999999", timeout=5).status_code == 404
    assert requests.get(f"{sink.url}/nope", timeout=5).status_code == 404

    stats = requests.get(f"{sink.url}/stats", timeout=5).json()
    assert stats == {"messages": 2, "recipients": 2, "attempts": 2, "sessions": 2, "stored": 2,
                     "per_peer": {"127.0.0.1": 2}}

    assert requests.delete(f"{sink.url}/messages", timeout=5).json() == {"deleted": 2}
    assert requests.get(f"{sink.url}/messages", timeout=5).json() == {"items": [], "total": 0}
    assert requests.get(f"{sink.url}/stats", timeout=5).json()["messages"] == 0


def test_http_script(sink):
    resp = requests.post(f"{sink.url}/script", json={"data": ["451 4.3.0 Later"]}, timeout=5)
    assert resp.json()["data"] == ["451 4.3.0 Later"]
    with pytest.raises(aiosmtplib.SMTPDataError):
        asend(sink)
    assert requests.post(f"{sink.url}/script", json={"data": "x"}, timeout=5).status_code == 400
    assert requests.post(f"{sink.url}/script", data=b"{not json", timeout=5).status_code == 400

    requests.post(f"{sink.url}/script", json={"default_data": "defer-forever"}, timeout=5)
    assert requests.delete(f"{sink.url}/script", timeout=5).json()["default_data"] == "250 2.0.0 OK"
    asend(sink)
    assert len(sink.wait_for(1)) == 1


def test_html_pages_escape_everything(sink):
    data = b"From: x&y@sender.test\r\nSubject: <script>alert(1)</script>\r\n\r\nhi <b>\r\n"
    asend(sink, data=data, sender="a&b@sender.test")
    [msg] = sink.wait_for(1)
    page = requests.get(sink.url + "/", timeout=5)
    assert page.headers["Content-Type"].startswith("text/html")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script>" not in page.text
    assert "x&amp;y@sender.test" in page.text
    assert f'href="/view/{msg["id"]}"' in page.text
    view = requests.get(f"{sink.url}/view/{msg['id']}", timeout=5)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in view.text
    assert "<script>" not in view.text
    assert "a&amp;b@sender.test" in view.text  # the envelope
    assert "hi &lt;b&gt;" in view.text and "<b>" not in view.text


def test_starttls():
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with Sink(tls_context=server_ctx) as sink:
        asend(sink, start_tls=True, tls_context=client_ctx)
        with smtplib.SMTP("127.0.0.1", sink.smtp_port) as client:
            client.ehlo()
            assert client.has_extn("starttls")
            client.sendmail("a@sender.test", ["b@rcpt.test"], RAW)  # STARTTLS is optional
        messages = sink.wait_for(2)
        assert [m["tls"] for m in messages] == [True, False]
        # The session after STARTTLS is a fresh one: it still knows when its connection came.
        assert all(m["connected_at"] > 0 for m in messages)


def test_many_messages_in_one_session(sink):
    async def session():
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=sink.smtp_port, start_tls=False) as client:
            for i in range(300):
                await client.sendmail("a@sender.test", [f"r{i}@rcpt.test"], RAW)
                await client.rset()

    asyncio.run(session())
    messages = sink.wait_for(300)
    assert [m["rcpt_tos"] for m in messages] == [[f"r{i}@rcpt.test"] for i in range(300)]
    assert len({m["id"] for m in messages}) == 300


def test_store_false_keeps_only_counters():
    with Sink(store=False) as sink:
        for _ in range(3):
            asend(sink)
        assert sink.wait_for(3) == []
        assert sink.stats() == {"messages": 3, "recipients": 3, "attempts": 3, "sessions": 3, "stored": 0,
                                "per_peer": {"127.0.0.1": 3}}


def test_max_messages_keeps_the_latest():
    with Sink(max_messages=2) as sink:
        for i in range(4):
            asend(sink, [f"r{i}@rcpt.test"])
        sink.wait_for(4)
        assert [m["rcpt_tos"] for m in sink.messages()] == [["r2@rcpt.test"], ["r3@rcpt.test"]]
        assert sink.stats()["messages"] == 4


def test_several_sinks_at_once(sink):
    with Sink() as other:
        assert other.smtp_port != sink.smtp_port and other.http_port != sink.http_port
        asend(other)
        assert len(other.wait_for(1)) == 1
        assert sink.messages() == []


def test_wait_for_times_out(sink):
    with pytest.raises(TimeoutError):
        sink.wait_for(1, timeout=0.2)


@pytest.mark.parametrize("arg", [
    "<a@b.test>", "<a@b.test> SIZE=12 BODY=8BITMIME", "<a@b.test>X=1", "<o'neil+tag/x=y@sub-d.b.test>",
    "<>", "a@b.test", '<"x y"@b.test>', "<a..b@c>", "<a@[127.0.0.1]>", "<ü@b.test>", "<a@b.test>(c) X=1",
    "<@route:a@b.test>",
])
def test_fast_address_parsing_agrees_with_aiosmtpd(arg):
    smtp = Connection.__new__(Connection)  # _getaddr only needs local_part_limit
    smtp.local_part_limit = 0
    assert smtp._getaddr(arg) == SMTP._getaddr(smtp, arg)


def test_serve_prints_addresses_and_stops_on_sigterm():
    code = "from envoi.dev.sink import serve; serve('127.0.0.1', 0, '127.0.0.1', 0)"
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stdout.readline()  # "envoi sink: SMTP 127.0.0.1:PORT, HTTP http://…"
            assert line.startswith("envoi sink: SMTP 127.0.0.1:")
            smtp_port = int(line.split(":")[2].split(",")[0])
            url = line.rsplit(" ", 1)[1].strip()
            with smtplib.SMTP("127.0.0.1", smtp_port) as client:
                client.sendmail("a@sender.test", ["b@rcpt.test"], RAW)
            assert requests.get(f"{url}/stats", timeout=5).json()["messages"] == 1
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()
