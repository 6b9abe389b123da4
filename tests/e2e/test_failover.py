"""Failover of the stores under a running stack of real processes (`envoi api` under gunicorn, `envoi relay`,
`envoi worker`): nothing accepted is lost, nothing hangs, and everything resumes without a restart.

Redis: a private primary + replica with three `redis-sentinel`s (tests/support/redis_sentinel.py); the
processes reach it with ENVOI_REDIS_SENTINELS / ENVOI_REDIS_SENTINEL_SERVICE. Mid-load the primary is
SIGKILLed; Sentinel promotes the replica. Select with `-m failover`.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections import Counter

import pytest
import redis
import requests

from envoi.dev.sink import Sink
from tests.support.processes import Proc, envoi, free_port, http_ok, process_env
from tests.support.redis_sentinel import SERVICE, SentinelCluster
from tests.support.relay import wait_until
from tests.support.webhook_receiver import Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.failover]
MESSAGE_ID = re.compile(r"^Message-ID:\s*<([^>]+)>", re.M | re.I)
REQUEST_TIMEOUT = 30  # a request without an answer by then counts as a hang (the machine is slow and shared)


class Stack:
    """api + relay + worker on their own ports, delivering to `sink`, with extra env."""

    def __init__(self, settings, sink: Sink, tmp, **env):
        self.tmp, self.api_port = tmp, free_port()
        self.env = process_env(settings, ENVOI_SMTP_ROUTE=f"127.0.0.1:{sink.smtp_port}", ENVOI_RETRY_SCHEDULE="1,2",
                               ENVOI_RELAY_HOST=f"failover-{uuid.uuid4().hex[:6]}", ENVOI_WEBHOOK_ALLOW="127.0.0.1/32",
                               ENVOI_WEBHOOK_RETRY_SCHEDULE="1", **env)
        self.procs: list[Proc] = []

    def start(self, *names: str) -> Stack:
        argv = {"api": envoi("api", "--bind", f"127.0.0.1:{self.api_port}", "--workers", "2", "--threads", "4"),
                "relay": envoi("relay", "--metrics-port", "0"),
                "worker": envoi("worker", "--processes", "2")}
        for name in names:
            proc = Proc(name, argv[name], self.env, self.tmp)
            self.procs.append(proc)
            proc.wait_ready((lambda: http_ok(f"{self.base}/healthz")) if name == "api" else (lambda: True), timeout=90)
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def output(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()}" for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


class Load(threading.Thread):
    """Sends `n` messages over HTTP, one recipient each; keeps every answer's status and duration."""

    def __init__(self, base: str, domain: str, key: str, n: int, tag: str, pause: float = 0.02):
        super().__init__(daemon=True)
        self.url, self.key, self.domain, self.n, self.tag, self.pause = f"{base}/v3/{domain}/messages", key, domain, n, tag, pause
        self.accepted: set[tuple[str, str]] = set()
        self.answers: Counter = Counter()
        self.slowest = 0.0
        self.refusals: list[tuple[int, dict, str | None]] = []

    def run(self) -> None:
        session = requests.Session()
        session.auth = ("api", self.key)
        for i in range(self.n):
            to = f"r{i}@d{i % 10}.{self.tag}.test"
            started = time.monotonic()
            try:
                resp = session.post(self.url, data={"from": f"s@{self.domain}", "to": to, "subject": f"m{i}",
                                                    "text": "failover"}, timeout=REQUEST_TIMEOUT)
            except requests.RequestException as ex:
                self.answers[type(ex).__name__] += 1
                session = requests.Session()
                session.auth = ("api", self.key)
                continue
            finally:
                self.slowest = max(self.slowest, time.monotonic() - started)
            self.answers[resp.status_code] += 1
            if resp.status_code == 200:
                self.accepted.add((resp.json()["id"].strip("<>"), to))
            else:
                self.refusals.append((resp.status_code, resp.json(), resp.headers.get("Retry-After")))
            time.sleep(self.pause)


class LiveReader(threading.Thread):
    """A client of the live events stream (SSE) that reconnects with Last-Event-ID, as EventSource does."""

    def __init__(self, base: str, domain: str, key: str):
        super().__init__(daemon=True)
        self.url, self.auth = f"{base}/v3/{domain}/events/live", ("api", key)
        self.seen: list[dict] = []
        self.stop = threading.Event()
        self.last_id: str | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            try:
                with requests.get(self.url, auth=self.auth, headers=headers, stream=True, timeout=20) as resp:
                    if resp.status_code != 200:
                        time.sleep(1)
                        continue
                    for line in resp.iter_lines(decode_unicode=True):
                        if self.stop.is_set():
                            return
                        if line.startswith("id: "):
                            self.last_id = line[4:]
                        elif line.startswith("data: "):
                            self.seen.append(json.loads(line[6:]))
            except requests.RequestException:
                time.sleep(0.5)

    def saw(self, message_id: str, event: str) -> bool:
        return any(e.get("event") == event and e.get("message", {}).get("headers", {}).get("message-id") == message_id
                   for e in list(self.seen))


def delivered(sink: Sink) -> Counter:
    counts: Counter = Counter()
    for m in sink.messages():
        match = MESSAGE_ID.search(m["data"])
        for rcpt in m["rcpt_tos"]:
            counts[(match.group(1) if match else "", rcpt)] += 1
    return counts


def send_one(base: str, domain: str, key: str, to: str) -> str:
    resp = requests.post(f"{base}/v3/{domain}/messages", auth=("api", key), timeout=REQUEST_TIMEOUT,
                         data={"from": f"s@{domain}", "to": to, "subject": "after", "text": "after the failover"})
    assert resp.status_code == 200, resp.text
    return resp.json()["id"].strip("<>")


@pytest.fixture
def sentinels(tmp_path):
    with SentinelCluster(tmp_path / "redis") as cluster:
        yield cluster


@pytest.fixture
def sink():
    with Sink(max_messages=5000) as s:
        yield s


def test_redis_primary_killed_mid_load_fails_over_through_sentinel(settings, services, account, domain, api_key,
                                                                   sentinels, sink, tmp_path):
    (tmp_path / "procs").mkdir()
    # The processes know Redis only through the sentinels: REDIS_URL gives the db number, its host and
    # port lead nowhere.
    stack = Stack(settings, sink, tmp_path / "procs", REDIS_URL="redis://127.0.0.1:1/0",
                  ENVOI_REDIS_SENTINELS=sentinels.sentinels, ENVOI_REDIS_SENTINEL_SERVICE=SERVICE)
    # The load goes to `domain`; the webhook watches a second domain of the account, so that its deliveries
    # are not queued behind the load's (what is asserted is that they resume, not their throughput).
    hooked = services.accounts.add_domain(account["id"], f"{uuid.uuid4().hex[:8]}.example.test",
                                          dkim_key_size=1024, verified=True)["name"]
    try:
        stack.start("api", "relay", "worker")
        name = domain["name"]
        with Receiver() as hooks:
            resp = requests.post(f"{stack.base}/v3/domains/{hooked}/webhooks", auth=("api", api_key), timeout=30,
                                 data={"id": "delivered", "url": hooks.url("/delivered")})
            assert resp.status_code == 200, resp.text
            live = LiveReader(stack.base, hooked, api_key)
            live.start()

            def hooked_and_live(message_id: str) -> None:
                wait_until(lambda: any(r["payload"] and r["payload"]["event-data"]["message"]["headers"]["message-id"]
                                       == message_id for r in hooks.got("/delivered")), timeout=120, interval=0.3)
                wait_until(lambda: live.saw(message_id, "delivered"), timeout=60, interval=0.3)

            wait_until(lambda: live.last_id is not None or _ping(stack, hooked, api_key), timeout=90, interval=2)
            hooked_and_live(send_one(stack.base, hooked, api_key, "before@early.sentinel.test"))

            load = Load(stack.base, name, api_key, 240, "sentinel")
            load.start()
            wait_until(lambda: len(load.accepted) >= 60, timeout=120, interval=0.05)
            old = sentinels.kill_primary()
            started = time.monotonic()
            new = sentinels.wait_failover(old)
            print(f"\nRedis primary :{old} killed; Sentinel promoted :{new} after {time.monotonic() - started:.1f} s")

            # After the failover: a new message is delivered, its webhook arrives, the live stream shows it
            # (the same SSE client: it reconnected, or its stream carried on, without a gap).
            after = send_one(stack.base, hooked, api_key, "after@late.sentinel.test")
            hooked_and_live(after)
            # ... and it went through the promoted primary.
            stream = redis.Redis(port=new).xrange(f"envoi:eu:events:live:{account['id']}")
            assert any(after.encode() in fields[b"e"] for _, fields in stream)
            live.stop.set()
            load.join(600)
            assert not load.is_alive()

        with contextlib.suppress(AssertionError):  # reported below
            wait_until(lambda: load.accepted <= set(delivered(sink)), timeout=180, interval=0.5)
        counts = delivered(sink)
        lost = load.accepted - set(counts)
        print(f"sent {load.n}: answers {dict(load.answers)}, accepted {len(load.accepted)}, lost {len(lost)}, "
              f"slowest answer {load.slowest:.1f} s; webhooks {len(hooks.requests)}, live events {len(live.seen)}")
        assert not lost, f"accepted but never delivered: {sorted(lost)[:5]}"
        assert set(load.answers) <= {200, 503}, f"{dict(load.answers)}\n{stack.output()}"  # no 500, no hang
        for status, body, retry_after in load.refusals:
            assert set(body) == {"message"} and retry_after, (status, body, retry_after)
        assert len(load.accepted) > load.n // 2
    except BaseException:
        print(stack.output(), sentinels.output())
        raise
    finally:
        stack.stop()


def _ping(stack: Stack, domain: str, key: str) -> bool:
    """Until the live reader has an id: send one message and let its events arrive."""
    send_one(stack.base, domain, key, f"warm-{uuid.uuid4().hex[:6]}@warm.sentinel.test")
    return False
