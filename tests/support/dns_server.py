"""A small authoritative DNS server for tests: real DNS on the wire (UDP and TCP), dnspython inside.

    with DnsServer() as dns:
        dns.add("example.com", "MX", "10 mx.example.com.")
        dns.add("mx.example.com", "A", "127.0.0.1")
        resolver = MxResolver(nameserver=("127.0.0.1", dns.port))

Unknown names get NXDOMAIN, a known name without the asked type NODATA. Failures can be injected
per name: servfail(name) answers SERVFAIL, drop(name) never answers. Every question received is
appended to `queries` as (name, type), e.g. ("example.com", "MX"), so tests can assert caching.

Also runnable, for end-to-end tests that need a separate process:

    python -m tests.support.dns_server --port 5353 --zone zone.json

where zone.json is a list of [name, type, value] (optionally [name, type, value, ttl]). It prints
"listening on HOST:PORT" once both sockets are bound, then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import socketserver
import struct
import threading

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset

from tests.support.servers import serve_in_background, shutdown


def _name(name: str) -> dns.name.Name:
    return dns.name.from_text(name)  # absolute, even without the trailing dot


def _display(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


class DnsServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self._requested_port = port
        self.port = port
        self.queries: list[tuple[str, str]] = []
        self._records: dict[dns.name.Name, dict[int, list[tuple[int, dns.rdata.Rdata]]]] = {}
        self._servfail: set[dns.name.Name] = set()
        self._drop: set[dns.name.Name] = set()
        self._lock = threading.Lock()
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []

    # -- zone -----------------------------------------------------------------------------

    def add(self, name: str, rdtype: str, value: str | bytes, ttl: int = 60) -> None:
        """Add one record. TXT values are given unquoted and split into 255-byte strings here."""
        kind = dns.rdatatype.from_text(rdtype)
        if kind == dns.rdatatype.TXT and not (isinstance(value, str) and value.startswith('"')):
            raw = value.encode() if isinstance(value, str) else value
            strings = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
            rdata = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, kind, strings)
        else:
            text = value.decode() if isinstance(value, bytes) else value
            rdata = dns.rdata.from_text(dns.rdataclass.IN, kind, text, origin=dns.name.root, relativize=False)
        with self._lock:
            self._records.setdefault(_name(name), {}).setdefault(kind, []).append((ttl, rdata))

    def clear(self) -> None:
        """Forget records, injected failures and the query log."""
        with self._lock:
            self._records.clear()
            self._servfail.clear()
            self._drop.clear()
            self.queries.clear()

    def servfail(self, name: str) -> None:
        with self._lock:
            self._servfail.add(_name(name))

    def drop(self, name: str) -> None:
        with self._lock:
            self._drop.add(_name(name))

    def count(self, name: str, rdtype: str | None = None) -> int:
        """How many questions for name (and type, if given) have arrived."""
        want = _display(_name(name))
        with self._lock:
            return sum(1 for n, t in self.queries if n == want and (rdtype is None or t == rdtype.upper()))

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> DnsServer:
        udp, tcp = self._bind()
        self._servers = [udp, tcp]
        for server in self._servers:
            server.dns = self  # type: ignore[attr-defined]
            self._threads.append(serve_in_background(server))
        return self

    def stop(self) -> None:
        shutdown(*self._servers)  # both at once
        for server in self._servers:
            server.server_close()
        for thread in self._threads:
            thread.join()
        self._servers, self._threads = [], []

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _bind(self) -> tuple[socketserver.BaseServer, socketserver.BaseServer]:
        # UDP and TCP must share a port number; with port 0 the one the kernel picks for UDP
        # may be taken for TCP, so try a few times.
        for _ in range(20):
            udp = _UdpServer((self.host, self._requested_port), _UdpHandler)
            port = udp.server_address[1]
            try:
                tcp = _TcpServer((self.host, port), _TcpHandler)
            except OSError:
                udp.server_close()
                if self._requested_port:
                    raise
                continue
            self.port = port
            return udp, tcp
        raise OSError("could not bind UDP and TCP on the same port")

    # -- answering ------------------------------------------------------------------------

    def answer(self, wire: bytes, *, udp: bool) -> bytes | None:
        """The response to one query in wire format, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None  # not DNS: ignore, as a real server would
        response = dns.message.make_response(query, recursion_available=True)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()

        question = query.question[0]
        name, kind = question.name, question.rdtype
        with self._lock:
            self.queries.append((_display(name), dns.rdatatype.to_text(kind)))
            if name in self._drop:
                return None
            if name in self._servfail:
                response.set_rcode(dns.rcode.SERVFAIL)
            elif not any(known.is_subdomain(name) for known in self._records):
                # A name with records below it (e.g. _domainkey.example.com) exists: NODATA.
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif records := self._records.get(name, {}).get(kind):
                rrset = dns.rrset.RRset(name, dns.rdataclass.IN, kind)
                for ttl, rdata in records:
                    rrset.add(rdata, ttl)  # an RRset has one TTL: the smallest wins
                response.answer.append(rrset)

        if not udp:
            return response.to_wire(max_size=65535)  # else dnspython applies the EDNS UDP limit
        # RFC 6891: the client's EDNS payload size, else the classic 512 bytes.
        max_size = max(512, query.payload) if query.edns >= 0 else 512
        try:
            return response.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            # Too big for UDP: an empty truncated answer makes the client retry over TCP.
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire()


class _UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
    allow_reuse_address = False


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = False


class _UdpHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        reply = self.server.dns.answer(data, udp=True)  # type: ignore[attr-defined]
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _TcpHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        # Messages are prefixed by a 2-byte length (RFC 1035 4.2.2); serve until the client closes.
        while header := self.rfile.read(2):
            if len(header) < 2:
                return
            (length,) = struct.unpack("!H", header)
            data = self.rfile.read(length)
            reply = self.server.dns.answer(data, udp=False)  # type: ignore[attr-defined]
            if reply is None:
                return  # "drop": close without answering
            self.wfile.write(struct.pack("!H", len(reply)) + reply)


def load_zone(server: DnsServer, path: str) -> None:
    with open(path) as f:
        for entry in json.load(f):
            name, rdtype, value, *ttl = entry
            server.add(name, rdtype, value, *ttl)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a test DNS zone on UDP and TCP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--zone", help="JSON list of [name, type, value(, ttl)]")
    args = parser.parse_args(argv)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())

    server = DnsServer(args.host, args.port)
    if args.zone:
        load_zone(server, args.zone)
    with server:
        print(f"listening on {args.host}:{server.port}", flush=True)
        while not stopping.wait(0.5):  # wake up now and then so signals are handled promptly
            pass


if __name__ == "__main__":
    main()
