"""The live event stream (SSE) over a real HTTP server, its resumption, filters and the CLI follower."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from envoi.api.app import create_app
from envoi.commands.logs import StreamError, format_event, sse_events
from tests.support.events import AppServer, record
from tests.support.relay import wait_until


@pytest.fixture(scope="module")
def server(settings, services):
    with AppServer(create_app(settings, services)) as srv:
        yield srv


def start_reader(url, key, **kwargs):
    """Read an SSE URL in a thread; returns (events list, thread) once the response has started."""
    results: list = []
    opened = threading.Event()

    def run():
        try:
            for event_id, data in sse_events(url, key, opened=opened.set, **kwargs):
                results.append((event_id, data))
        except Exception as ex:
            results.append(("error", ex))
            opened.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert opened.wait(5), "stream did not open"
    return results, thread


def items(results):
    return [data for _, data in results if data is not None]


def test_stream_delivers_new_events_and_resumes_with_last_event_id(server, services, domain, api_key):
    url = f"{server.url}/v3/{domain['name']}/events/live?timeout=1.5"
    results, thread = start_reader(url, api_key)
    first = record(services, domain, "delivered", recipient="live@dest.test")
    wait_until(lambda: items(results), 5)
    got = items(results)
    assert [d["id"] for d in got] == [first["id"]] and got[0]["recipient"] == "live@dest.test"
    thread.join(5)  # the response ends at its timeout; a client reconnects with Last-Event-ID
    last_id = [event_id for event_id, data in results if data is not None][-1]

    missed = [record(services, domain, "failed", severity="temporary") for _ in range(2)]
    results2, thread2 = start_reader(url, api_key, last_event_id=last_id)
    wait_until(lambda: len(items(results2)) >= 2, 5)
    thread2.join(5)
    assert [d["id"] for d in items(results2)] == [e["id"] for e in missed]  # none lost, none repeated


def test_stream_filters_and_tenant_isolation(server, services, account, domain, api_key):
    url = f"{server.url}/v3/{domain['name']}/events/live?timeout=1.5&event=failed%20OR%20delivered"
    results, thread = start_reader(url, api_key)
    record(services, domain, "accepted")
    wanted = record(services, domain, "failed", severity="permanent")
    other_domain = services.accounts.add_domain(account["id"], f"x{time.time_ns()}.example.test", dkim_key_size=1024, verified=True)
    record(services, other_domain, "failed", severity="permanent")  # same account, other domain
    thread.join(5)
    assert [d["id"] for d in items(results)] == [wanted["id"]]

    other = services.accounts.create_account("other-live")
    _, other_key = services.accounts.create_key(other["id"], "admin")
    with pytest.raises(StreamError, match="404"):
        list(sse_events(f"{server.url}/v3/{domain['name']}/events/live?timeout=1", other_key))
    with pytest.raises(StreamError, match="400"):
        list(sse_events(f"{server.url}/v3/{domain['name']}/events/live?event=(failed", api_key))
    for bad in ("nan", "inf", "-1", "soon"):
        with pytest.raises(StreamError, match="timeout must be a number of seconds"):
            list(sse_events(f"{server.url}/v3/{domain['name']}/events/live?timeout={bad}", api_key))
    with pytest.raises(StreamError, match="Last-Event-ID"):
        list(sse_events(f"{server.url}/v3/{domain['name']}/events/live", api_key, last_event_id="nope"))


def test_account_wide_stream_names_the_domain(server, services, account, domain, api_key):
    second = services.accounts.add_domain(account["id"], f"y{time.time_ns()}.example.test", dkim_key_size=1024, verified=True)
    results, thread = start_reader(f"{server.url}/v3/events/live?timeout=1.5", api_key)
    a = record(services, domain, "delivered")
    b = record(services, second, "delivered")
    other = services.accounts.create_account("other-wide")
    other_domain = services.accounts.add_domain(other["id"], f"z{time.time_ns()}.example.test", dkim_key_size=1024, verified=True)
    record(services, other_domain, "delivered")  # another tenant: never on this stream
    thread.join(5)
    got = items(results)
    assert [(d["id"], d["domain"]["name"]) for d in got] == [(a["id"], domain["name"]), (b["id"], second["name"])]


def test_keepalive_moves_position_past_filtered_events(server, services, domain, api_key, monkeypatch):
    monkeypatch.setattr(services.stream, "heartbeat", 0.2)
    url = f"{server.url}/v3/{domain['name']}/events/live?timeout=1&event=complained"
    results, thread = start_reader(url, api_key)
    record(services, domain, "accepted")
    thread.join(5)
    positions = [event_id for event_id, data in results if data is None]
    assert positions and positions[-1] == services.stream.latest(domain["account_id"])
    assert items(results) == []


def test_format_event_line():
    line = format_event({"event": "failed", "severity": "temporary", "timestamp": 1_700_000_000.5,
                         "recipient": "a@b.test", "reason": "generic",
                         "delivery-status": {"code": 451, "enhanced-code": "4.3.0", "message": "Try later",
                                             "mx-host": "mx.b.test", "tls": True, "attempt-no": 2},
                         "envelope": {"sending-ip": "127.0.0.5"},
                         "message": {"headers": {"subject": "Hi there", "message-id": "m1@x"}}}, colour=False)
    assert "failed/temporary" in line and "a@b.test" in line and "451 4.3.0 Try later" in line
    assert "(mx.b.test, TLS, 127.0.0.5, attempt 2)" in line and '"Hi there"' in line and "<m1@x>" in line
    coloured = format_event({"event": "delivered", "timestamp": 1_700_000_000, "recipient": "a@b.test"})
    assert "\x1b[32m" in coloured  # green


def test_cli_follow_prints_events_as_they_happen(server, services, domain, api_key):
    env = dict(os.environ, ENVOI_API_URL=server.url, ENVOI_API_KEY=api_key)
    proc = subprocess.Popen([sys.executable, "-m", "envoi.cli", "logs", "--follow", "--domain", domain["name"],
                             "--event", "delivered"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert "following" in proc.stderr.readline()  # connected banner (printed before connecting)
        deadline = time.monotonic() + 10
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
        reader.start()
        while not lines and time.monotonic() < deadline:
            record(services, domain, "accepted", recipient="skip@dest.test")
            record(services, domain, "delivered", recipient="cli@dest.test", subject="From the CLI")
            reader.join(0.5)
        assert lines, "envoi logs --follow printed nothing"
        assert "delivered" in lines[0] and "cli@dest.test" in lines[0] and '"From the CLI"' in lines[0]
        assert "skip@dest.test" not in lines[0]
    finally:
        proc.terminate()
        proc.wait(5)


def test_streams_are_capped_so_the_api_keeps_threads(server, services, domain, api_key, monkeypatch):
    monkeypatch.setattr(services.stream, "_slots", threading.BoundedSemaphore(1))
    monkeypatch.setattr(services.stream, "max_clients", 1)
    url = f"{server.url}/v3/{domain['name']}/events/live?timeout=1"
    _, thread = start_reader(url, api_key)
    with pytest.raises(OSError, match="429"):  # the follower treats 429 as "retry shortly"
        list(sse_events(url, api_key))
    # ordinary requests are still served meanwhile
    with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as resp:
        assert resp.status == 200
    thread.join(5)
    # the slot is free again once the first stream ended
    results, thread = start_reader(url, api_key)
    thread.join(5)
    assert not [r for r in results if r[0] == "error"]


def test_cli_lists_recent_events(server, services, domain, api_key):
    record(services, domain, "accepted", recipient="one@dest.test")
    record(services, domain, "failed", severity="permanent", recipient="two@dest.test", reason="bounce")
    env = dict(os.environ, ENVOI_API_URL=server.url, ENVOI_API_KEY=api_key)
    out = subprocess.run([sys.executable, "-m", "envoi.cli", "logs", "--domain", domain["name"], "--limit", "5"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and "one@dest.test" in lines[0] and "failed/permanent" in lines[1]
    assert "reason=bounce" in lines[1]


def test_redis_down_never_fails_the_write_path_and_the_stream_says_so():
    from envoi.events.errors import EventQueryError, StreamUnavailable
    from envoi.events.service import NewEvent
    from envoi.events.stream import LiveStream
    from envoi.infra.redis import client

    stream = LiveStream(client("redis://127.0.0.1:1/0"), "eu", max_clients=1)
    event = NewEvent(1, 1, None, {"event": "accepted", "id": "x", "timestamp": 1.0})
    started = time.monotonic()
    stream.publish([event])  # hands over to the publisher thread: returns at once
    assert time.monotonic() - started < 1.0  # (a loaded machine can take a while to start a thread)
    assert stream.publish_now([event]) is False  # the failure is logged, not raised
    with pytest.raises(StreamUnavailable):
        stream.open(1, domain_id=None, matches=lambda data: True, last_event_id=None)
    assert stream._slots.acquire(blocking=False)  # the slot was given back
    with pytest.raises(EventQueryError):  # a 400 at the HTTP edge
        stream.open(1, domain_id=None, matches=lambda data: True, last_event_id="not-an-id")


def test_resuming_after_the_stream_was_trimmed_reports_the_gap(server, services, domain, api_key, monkeypatch):
    stream = services.stream
    monkeypatch.setattr(stream, "maxlen", 3)
    monkeypatch.setattr(stream, "trim_exact", True)
    key = stream.key(domain["account_id"])

    def last_entry_is(event_id):
        entries = stream.redis.xrevrange(key, count=1)
        return entries and json.loads(entries[0][1][b"e"])["id"] == event_id

    first = record(services, domain, "delivered")
    wait_until(lambda: last_entry_is(first["id"]), 5)
    first_stream_id = stream.latest(domain["account_id"])
    later = [record(services, domain, "delivered") for _ in range(5)]
    wait_until(lambda: last_entry_is(later[-1]["id"]), 5)
    gaps: list[dict] = []
    got = [data for _, data in sse_events(f"{server.url}/v3/{domain['name']}/events/live?timeout=1", api_key,
                                          last_event_id=first_stream_id, on_gap=gaps.append) if data]
    assert [d["id"] for d in got] == [e["id"] for e in later[-3:]]  # what the stream still has
    [gap] = gaps
    assert gap["last-event-id"] == first_stream_id
    assert gap["begin"] <= later[0]["timestamp"] <= gap["end"]  # the window holding the trimmed ones
    # resuming from an id still in the stream reports no gap
    gaps.clear()
    list(sse_events(f"{server.url}/v3/{domain['name']}/events/live?timeout=0.5", api_key,
                    last_event_id=stream.latest(domain["account_id"]), on_gap=gaps.append))
    assert gaps == []
