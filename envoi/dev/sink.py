"""Dev/test sink MX: accepts any recipient, keeps what it receives, replies as scripted.

Used as the catch-all destination of `envoi sink` / `envoi up`, as a scriptable remote MX in
integration and end-to-end tests, and as a fast null destination for benchmarks.

    with Sink().start() as sink:
        ...deliver to ("127.0.0.1", sink.smtp_port)...
        [msg] = sink.wait_for(1)

Each stored message is a dict::

    {"id": int, "mail_from": str, "rcpt_tos": [str], "data": str, "peer": "127.0.0.3",
     "helo": str, "tls": bool, "smtputf8": bool, "connected_at": float, "received_at": float}

`mail_from` is "" for the null reverse-path (MAIL FROM:<>). `data` is the raw MIME decoded as
UTF-8 with surrogateescape, so ``data.encode("utf-8", "surrogateescape")`` gives back the exact
bytes received. `peer` is the client's source IP: tests use it to see which egress IP delivered.
`connected_at` is when the sink accepted the connection that carried the message: it tells which
client process sent it even when the sink reads a message some time after it was written.
`smtputf8` is whether MAIL FROM carried the SMTPUTF8 parameter (RFC 6531).

SMTPUTF8 is offered unless ``Sink(smtputf8=False)`` (a server without it: non-ASCII commands are
refused). PIPELINING (RFC 2920) is offered with ``Sink(pipelining=True)``. Like a real server, the sink refuses a non-ASCII address in a transaction whose MAIL FROM
did not ask for SMTPUTF8 (553 5.6.7).

Counters (`stats()`, GET /stats): messages and recipients accepted, DATA attempts (including
refused ones), messages held, and accepted messages per peer IP. store=False keeps only these.
`cut_after_data()` counts connections that ended with nothing said after the sink's 250 to a DATA
(no MAIL, RSET or QUIT): a client killed there may not have read that 250 (crash tests).

Script (`set_script()` or ``POST /script``; unknown keys are rejected so typos fail loudly):

* ``rcpt``: {address or "*@domain" or "*": reply line}, applied at RCPT, e.g. "550 5.1.1 No such user".
* ``data``: reply lines consumed in order by successive DATA commands across all connections,
  e.g. ["451 4.3.0 Try again", "250 OK"]; then ``default_data`` applies.
* ``default_data``: reply once ``data`` is exhausted (default "250 2.0.0 OK").
* ``data_delay``: seconds to wait before answering each DATA (a slow destination).

Special DATA replies: "defer-forever" answers 451 (handy as ``default_data``); "drop" reads the
message up to the final "." and closes the connection without replying. A dropped message IS
stored and counted: the remote did receive it, and the sender cannot know -- this is the
"lost 250" window in which a retry produces a duplicate, which is what tests want to observe.
Messages answered 4xx/5xx are not stored; every DATA is counted in ``attempts`` so retries show.

HTTP (JSON): GET /messages[?to=addr&since_id=N], GET /messages/{id}, GET /messages/{id}/raw,
DELETE /messages, GET /stats, GET|POST|DELETE /script.

HTTP (served by sink_http.py; the pages, a mail catcher, are rendered by sink_pages.py): GET /[?q=text] the list, newest first,
searched over from/to/subject; GET /view/{id} one message (headers, text, HTML in a sandboxed iframe
from /view/{id}/html[?images=1], attachments at /view/{id}/attachments/{n}, raw at /view/{id}/raw);
POST /view/{id}/delete and POST /delete-all (forms). Every response has a strict CSP and nosniff.
When bound to loopback, requests with a foreign Host header (DNS rebinding) and cross-origin POST or
DELETE requests (another site's form) are refused with 403.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import signal
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from envoi.dev.sink_http import SinkHTTPServer
from envoi.mta.listener import Listener, SessionOptions

DEFAULT_DATA_REPLY = "250 2.0.0 OK"
DROP = "drop"
DEFER_FOREVER = "defer-forever"
DEFER_FOREVER_REPLY = "451 4.3.0 Deferred by sink script"
DATA_SIZE_LIMIT = 50 * 1024 * 1024

_REPLY_LINE = re.compile(r"[2-5][0-9][0-9]( [^\r\n]*)?")


def _reply(value: Any, specials: tuple[str, ...] = ()) -> str:
    if isinstance(value, str) and (value in specials or _REPLY_LINE.fullmatch(value)):
        return value
    raise ValueError(f"not an SMTP reply line: {value!r}")


@dataclass
class _Script:
    rcpt: dict[str, str] = field(default_factory=dict)
    data: collections.deque[str] = field(default_factory=collections.deque)
    default_data: str = DEFAULT_DATA_REPLY
    data_delay: float = 0.0

    @classmethod
    def parse(cls, spec: dict[str, Any]) -> _Script:
        if not isinstance(spec, dict):
            raise ValueError("script must be a JSON object")
        unknown = set(spec) - {"rcpt", "data", "default_data", "data_delay"}
        if unknown:
            raise ValueError(f"unknown script keys: {sorted(unknown)}")
        rcpt = spec.get("rcpt") or {}
        data = spec.get("data") or []
        if not isinstance(rcpt, dict) or not isinstance(data, list):
            raise ValueError("rcpt must be an object and data a list")
        delay = spec.get("data_delay", 0.0)
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise ValueError(f"data_delay must be a number >= 0: {delay!r}")
        specials = (DROP, DEFER_FOREVER)
        return cls(
            rcpt={str(k).lower(): _reply(v) for k, v in rcpt.items()},
            data=collections.deque(_reply(v, specials) for v in data),
            default_data=_reply(spec.get("default_data", DEFAULT_DATA_REPLY), specials),
            data_delay=float(delay),
        )

    def as_dict(self) -> dict[str, Any]:
        return {"rcpt": dict(self.rcpt), "data": list(self.data),
                "default_data": self.default_data, "data_delay": self.data_delay}


class _Handler:
    """The listener's hooks. Kept apart from Sink because aiosmtpd introspects the handler per connection.

    session.after_data: the last thing on this connection was our 250 to a DATA (cut_after_data())."""

    def __init__(self, sink: Sink):
        self._sink = sink

    def on_connect(self, session) -> None:
        session.connected_at = time.time()
        session.after_data = False

    def on_disconnect(self, session) -> None:
        if getattr(session, "after_data", False):
            self._sink._cut_after_data()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname  # what the listener does without this hook
        with self._sink._cond:
            self._sink._n_sessions += 1
        if self._sink._pipelining:  # aiosmtpd reads commands one by one: pipelined ones just queue
            return responses[:-1] + ["250-PIPELINING", responses[-1]]
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        session.after_data = False
        envelope.mail_from = address  # what the listener does without this hook
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RSET(self, server, session, envelope):
        session.after_data = False
        return "250 OK"

    async def handle_QUIT(self, server, session, envelope):
        session.after_data = False
        return "221 Bye"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if not envelope.smtp_utf8 and not (address.isascii() and envelope.mail_from.isascii()):
            return "553 5.6.7 Non-ASCII address without SMTPUTF8"  # RFC 6531 3.4
        reply = self._sink._rcpt_reply(address) or "250 2.1.5 OK"
        if reply[0] == "2":
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_DATA(self, server, session, envelope):
        reply, delay = self._sink._next_data_reply()
        if delay:
            await asyncio.sleep(delay)
        if reply == DROP:
            self._sink._record(session, envelope)
            server.transport.close()
            # connection_lost() cancels this task, so aiosmtpd never writes a reply.
            await asyncio.Event().wait()
        if reply[0] == "2":
            self._sink._record(session, envelope)
            session.after_data = True
        return reply


class Sink:
    """An SMTP sink (own thread and event loop) plus its HTTP inspection server (own threads)."""

    def __init__(self, smtp_host: str = "127.0.0.1", smtp_port: int = 0, http_host: str = "127.0.0.1",
                 http_port: int = 0, *, store: bool = True, max_messages: int = 10_000,
                 tls_context: ssl.SSLContext | None = None, require_starttls: bool = False,
                 hostname: str = "sink.envoi.test", smtputf8: bool = True, pipelining: bool = False):
        self.smtp_host, self.smtp_port = smtp_host, smtp_port
        self._smtputf8 = smtputf8
        self._pipelining = pipelining
        self.http_host, self.http_port = http_host, http_port
        self._store = store
        self._tls_context = tls_context
        self._require_starttls = require_starttls
        self._hostname = hostname
        # One condition guards the store, the counters and the script; wait_for() waits on it.
        self._cond = threading.Condition()
        self._messages: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_messages)
        self._last_id = 0
        self._reset_counters()
        self._script = _Script()
        self._handler = _Handler(self)
        self._smtp: Listener | None = None
        self._http: SinkHTTPServer | None = None
        self._http_thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Sink:
        try:
            options = SessionOptions(hostname=self._hostname, ident="Envoi sink", data_size_limit=DATA_SIZE_LIMIT,
                                     smtputf8=self._smtputf8, tls_context=self._tls_context,
                                     require_starttls=self._require_starttls)
            self._smtp = Listener(self._handler, options, host=self.smtp_host, ports={"smtp": self.smtp_port},
                                  thread_name="envoi-sink-smtp").start()
            self.smtp_port = self._smtp.port
            self._http = SinkHTTPServer((self.http_host, self.http_port), self)
            self.http_port = self._http.server_address[1]
            # A short poll interval makes stop() quick: tests start and stop many sinks.
            self._http_thread = threading.Thread(target=self._http.serve_forever, args=(0.05,),
                                                 name="envoi-sink-http", daemon=True)
            self._http_thread.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._http is not None:
            if self._http_thread is not None:
                self._http.shutdown()
                self._http_thread.join()
            self._http.server_close()
            self._http = self._http_thread = None
        if self._smtp is not None:
            self._smtp.stop()
            self._smtp = None

    def __enter__(self) -> Sink:
        return self if self._smtp is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host = f"[{self.http_host}]" if ":" in self.http_host else self.http_host
        return f"http://{host}:{self.http_port}"

    # -- store and counters ---------------------------------------------------------------------

    def _reset_counters(self) -> None:
        self._n_messages = self._n_recipients = self._n_attempts = self._n_cut_after_data = 0
        self._n_sessions = 0  # EHLOs: a client's sessions, whether or not they carried mail
        self._per_peer: dict[str, int] = {}

    def _record(self, session, envelope) -> None:
        peer = session.peer[0] if session.peer else ""
        msg = None
        if self._store:
            # aiosmtpd reports the null reverse-path (bounces, DSNs) as "<>"; store it as "".
            mail_from = "" if envelope.mail_from == "<>" else envelope.mail_from
            msg = {"id": 0, "mail_from": mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                   "data": envelope.original_content.decode("utf-8", "surrogateescape"),
                   "peer": peer, "helo": session.host_name or "", "tls": session.ssl is not None,
                   "smtputf8": bool(envelope.smtp_utf8),
                   "connected_at": getattr(session, "connected_at", 0.0), "received_at": time.time()}
        with self._cond:
            self._n_messages += 1
            self._n_recipients += len(envelope.rcpt_tos)
            self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
            if msg is not None:
                self._last_id += 1
                msg["id"] = self._last_id
                self._messages.append(msg)
            self._cond.notify_all()

    def messages(self, to: str | None = None, since_id: int | None = None) -> list[dict[str, Any]]:
        """Stored messages, oldest first; optionally only those for recipient `to` / with id > since_id."""
        with self._cond:
            items = list(self._messages)
        if since_id is not None:
            items = [m for m in items if m["id"] > since_id]
        if to is not None:
            to = to.lower()
            items = [m for m in items if any(r.lower() == to for r in m["rcpt_tos"])]
        return [dict(m) for m in items]

    def message(self, msg_id: int) -> dict[str, Any] | None:
        with self._cond:
            for m in self._messages:
                if m["id"] == msg_id:
                    return dict(m)
        return None

    def delete(self, msg_id: int) -> bool:
        """Forget one stored message (counters unchanged); False if it is not held."""
        with self._cond:
            for m in self._messages:
                if m["id"] == msg_id:
                    self._messages.remove(m)
                    return True
        return False

    def clear(self) -> int:
        """Forget stored messages and zero the counters (ids keep increasing); returns how many were held."""
        with self._cond:
            n = len(self._messages)
            self._messages.clear()
            self._reset_counters()
            return n

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"messages": self._n_messages, "recipients": self._n_recipients,
                    "attempts": self._n_attempts, "sessions": self._n_sessions, "stored": len(self._messages),
                    "per_peer": dict(self._per_peer)}

    def cut_after_data(self) -> int:
        """Connections that ended right after a 250 to DATA, with no command after it (see module doc)."""
        with self._cond:
            return self._n_cut_after_data

    def _cut_after_data(self) -> None:
        with self._cond:
            self._n_cut_after_data += 1

    def wait_for(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """Block until `count` messages were accepted since the last clear(); returns the stored ones.

        Counts accepted messages rather than stored ones, so it also works with store=False.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._n_messages < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"sink got {self._n_messages} of {count} messages in {timeout}s")
                self._cond.wait(remaining)
        return self.messages()

    # -- script ---------------------------------------------------------------------------------

    def set_script(self, spec: dict[str, Any]) -> None:
        """Replace the whole script (see module docstring); raises ValueError on a malformed one."""
        script = _Script.parse(spec)
        with self._cond:
            self._script = script

    def reset_script(self) -> None:
        with self._cond:
            self._script = _Script()

    def script(self) -> dict[str, Any]:
        with self._cond:
            return self._script.as_dict()

    def _rcpt_reply(self, address: str) -> str | None:
        rules = self._script.rcpt  # replaced wholesale, never mutated: no lock needed
        if not rules:
            return None
        address = address.lower()
        return rules.get(address) or rules.get("*@" + address.rpartition("@")[2]) or rules.get("*")

    def _next_data_reply(self) -> tuple[str, float]:
        with self._cond:
            self._n_attempts += 1
            script = self._script
            reply = script.data.popleft() if script.data else script.default_data
        return (DEFER_FOREVER_REPLY if reply == DEFER_FOREVER else reply), script.data_delay


def serve(smtp_host: str, smtp_port: int, http_host: str, http_port: int, **kw: Any) -> None:
    """Run a sink until SIGINT/SIGTERM (for `envoi sink`). Must be called from the main thread."""
    # aiosmtpd logs every command at INFO, which would drown the console under `envoi up`.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Sink(smtp_host, smtp_port, http_host, http_port, **kw) as sink:
            print(f"envoi sink: SMTP {smtp_host}:{sink.smtp_port}, HTTP {sink.url}", flush=True)
            while not stopping.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
