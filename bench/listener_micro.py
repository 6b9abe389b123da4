"""Python CPU of the SMTP listener per message with no sockets: aiosmtpd's command loop and Envoi's Connection.

    .venv/bin/python bench/listener_micro.py [rounds]
    PYTHONPATH=/tmp/envoi-base .venv/bin/python bench/listener_micro.py   # another checkout's listener (A/B)

A Connection on uvloop gets a fake transport (replies are recorded, nothing is sent) and is fed MAIL, RCPT,
DATA and a ~5 KB body by data_received, a command at a time, as bench/listener_cpu.py's client sends them.
Printed: process CPU per message in microseconds for each round of 5,000 messages, and the best round; the
syscalls, TLS and the kernel's share that listener_cpu.py --tls measures are left out, so the difference
between two checkouts' Python is resolved on a loaded machine. Alternate the checkouts, compare the minima.
"""

import asyncio
import sys
import time

import uvloop

import envoi.mta.listener as L
from envoi.mta.listener import Listener, SessionOptions

LINE = b"Thank you for your order. Your parcel is on its way and will arrive soon.\r\n"
BODY = b"From: a@bench.example\r\nTo: c@d.example\r\nSubject: s\r\n\r\n" + LINE * 68 + b".\r\n"

class Hooks:
    async def handle_MAIL(self, server, session, envelope, address, options):
        envelope.mail_from = address
        return "250 2.1.0 Sender OK"
    async def handle_RCPT(self, server, session, envelope, address, options):
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient OK"
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 Ok: queued"

class FakeTransport:
    def __init__(self):
        self.waiter = None
        self.closing = False

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 1234), "sockname": ("127.0.0.1", 25)}.get(name, default)

    def write(self, data):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True

    abort = close

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def get_write_buffer_size(self):
        return 0

async def main(n):
    loop = asyncio.get_running_loop()
    listener = Listener(Hooks(), SessionOptions(
        hostname="bench", ident="bench", data_size_limit=25 << 20, enhanced_status_codes=True,
        command_limits={"MAIL": 10**8, "RCPT": 10**8, "DATA": 10**8, "*": 10}))
    conn = listener._factory(loop, False)()
    t = FakeTransport()
    async def say(data):
        fut = t.waiter = loop.create_future()
        conn.data_received(data)
        return await fut
    fut = t.waiter = loop.create_future()
    conn.connection_made(t)
    await fut
    await say(b"EHLO bench\r\n")
    cmds = [(b"MAIL FROM:<a@bench.example>\r\n", b"RCPT TO:<r%d@d.example>\r\n" % i, b"DATA\r\n", BODY)
            for i in range(1000)]
    best = []
    for _ in range(n):
        t0 = time.process_time()
        for _repeat in range(5):
            for m, r, d, b in cmds:
                await say(m)
                await say(r)
                await say(d)
                reply = await say(b)
        best.append((time.process_time() - t0) / 5000 * 1e6)
    assert reply.startswith(b"250"), reply
    return best

if __name__ == "__main__":
    rounds = uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
    print(L.__file__, " ".join(f"{x:.1f}" for x in rounds), "µs CPU per message; best", f"{min(rounds):.1f}")
