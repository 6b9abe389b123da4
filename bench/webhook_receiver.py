"""A lean webhook receiver for the benches (bench/webhook_dispatch.py, bench/relay_vs_postfix.py
--webhooks), in its own process: measurement equipment, like the SMTP sink.

    python bench/webhook_receiver.py PORT SLOW_PORT KEYS_JSON

Answers 200 at once on POST /hook, after 5 s on POST /slow (served on SLOW_PORT as well: another endpoint
host for the dispatcher's per-endpoint caps); GET /stats gives received (/hook), distinct event ids,
invalid signatures, the commit->received latency (receipt time minus the event-data's "timestamp", set
when the row was committed) p50/p99/max of /hook since POST /reset, and this receiver's own event-loop
stalls over 50 ms (the five longest) since then.

Every signature is checked (Mailgun's: HMAC-SHA256 of timestamp + token with the account's key, KEYS_JSON
{"account id": "key"}; the bench's event-data carries "account", real events are checked with the key
under "*") and every event id counted, but not while the request is answered: a request's body is kept
with its receipt time and checked when /stats is next asked (after a phase: the benches poll /stats
once the phase's traffic is sent). Instrument change, 2026-12-07 (branch hookcut): this was an aiohttp
server that parsed and verified each webhook before answering, about 0.2 ms of CPU per webhook on the
same 2 cores as the system under test (uncounted, but taken from it). Now a raw asyncio Protocol with
minimal HTTP/1.1 keep-alive parsing (request line, Content-Length; no chunked bodies, which no client
here sends); what the dispatcher sends and must get back (a 200 with a short body, keep-alive) is the
same, and so are the figures /stats reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import sys
import time
from email.utils import formatdate

# The answer aiohttp's server gave (the same headers: the dispatcher parses the same reply), its Date
# formatted once a second.
OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\nDate: "
OK_TAIL = b"\r\nServer: Python/3.11 aiohttp/3.14.5\r\n\r\nok"
_ok = [0, b""]


def ok() -> bytes:
    now = int(time.time())
    if _ok[0] != now:
        _ok[0], _ok[1] = now, OK_HEAD + formatdate(now, usegmt=True).encode() + OK_TAIL
    return _ok[1]


BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
MAX_HEAD = 16384


class State:
    def __init__(self, keys: dict[str, str]):
        self.keys = {k: v.encode() for k, v in keys.items()}
        self.received = self.invalid = self.slow = 0
        self.ids: set[str] = set()
        self.latencies: list[float] = []
        self.stalls: list[float] = []
        self.pending: list[tuple[float, bytes, bool]] = []  # (receipt time, body, on /hook) not yet checked

    def check(self) -> None:
        """Verify and count the bodies received since the last call."""
        pending, self.pending = self.pending, []
        for at, body, hook in pending:
            try:
                data = json.loads(body)
                sig, event = data["signature"], data["event-data"]
                key = self.keys.get(str(event.get("account"))) or self.keys["*"]
                expected = hmac.new(key, (sig["timestamp"] + sig["token"]).encode(), hashlib.sha256).hexdigest()
                valid = hmac.compare_digest(expected, sig["signature"])
            except (ValueError, KeyError, TypeError, AttributeError):
                self.invalid += 1
                continue
            if not valid:
                self.invalid += 1
            if hook:
                self.ids.add(event["id"])
                self.latencies.append(at - event["timestamp"])

    def stats(self) -> bytes:
        self.check()
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else None

        return json.dumps({"received": self.received, "distinct": len(self.ids), "invalid": self.invalid,
                           "slow": self.slow, "n": len(lat), "p50": pct(50), "p99": pct(99),
                           "max": lat[-1] if lat else None,
                           "stalls": sorted(self.stalls, reverse=True)[:5]}).encode()

    def reset(self) -> None:
        self.check()  # what came before counts in received/distinct/invalid, not in the new latencies
        self.latencies, self.stalls = [], []


class Http(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, one request at a time per connection (as the dispatcher sends them)."""

    def __init__(self, state: State):
        self.state = state
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a /slow answer is pending: later requests on this connection wait for it

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if not self.busy:
            self._serve()

    def _serve(self) -> None:
        while not self.busy:
            buf = self.buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._fail()
                return
            head = buf[:end]
            line_end = head.find(b"\r\n")
            parts = (head if line_end < 0 else head[:line_end]).split(b" ")
            if len(parts) != 3:
                return self._fail()
            method, path = parts[0], parts[1]
            length = 0
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                try:
                    length = int(lower[at + 17:stop if stop >= 0 else len(lower)])
                except ValueError:
                    return self._fail()
            elif b"\r\ntransfer-encoding:" in lower:
                return self._fail()  # chunked bodies: no client of the benches sends them
            start = end + 4
            if len(buf) < start + length:
                return
            body = buf[start:start + length]
            self.buf = buf[start + length:]
            close = b"\r\nconnection: close" in lower
            self._request(method, path, body, close)

    def _request(self, method: bytes, path: bytes, body: bytes, close: bool) -> None:
        state = self.state
        if method == b"POST" and path in (b"/hook", b"/slow"):
            hook = path == b"/hook"
            state.pending.append((time.time(), body, hook))
            if hook:
                state.received += 1
                self._answer(ok(), close)
            else:
                state.slow += 1
                self.busy = True
                asyncio.get_running_loop().call_later(5, self._slow_done, close)
        elif method == b"GET" and path == b"/stats":
            payload = state.stats()
            self._answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(payload), payload), close)
        elif method == b"POST" and path == b"/reset":
            state.reset()
            self._answer(ok(), close)
        else:
            self._answer(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", close)

    def _slow_done(self, close: bool) -> None:
        self.busy = False
        if self.transport is None or self.transport.is_closing():
            return
        self._answer(ok(), close)
        self._serve()

    def _answer(self, response: bytes, close: bool) -> None:
        self.transport.write(response)
        if close:
            self.transport.close()
            self.busy = True  # nothing more on this connection

    def _fail(self) -> None:
        self.transport.write(BAD)
        self.transport.close()
        self.busy = True

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.busy = True


async def lag(state: State) -> None:
    """This receiver's own event-loop stalls over 50 ms (its answers wait too: counted as latency)."""
    while True:
        started = time.monotonic()
        await asyncio.sleep(0.01)
        if (late := time.monotonic() - started - 0.01) > 0.05:
            state.stalls.append(round(late, 3))


async def serve(port: int, slow_port: int, keys: dict[str, str]) -> None:
    state = State(keys)
    loop = asyncio.get_running_loop()
    for p in (port, slow_port):
        await loop.create_server(lambda: Http(state), "127.0.0.1", p, backlog=128)  # as aiohttp's TCPSite: the dispatcher's pacing of new connections is for it
    await lag(state)


def main() -> None:
    port, slow_port = int(sys.argv[1]), int(sys.argv[2])
    with open(sys.argv[3]) as f:
        keys = json.loads(f.read())
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(port, slow_port, keys))


if __name__ == "__main__":
    main()
