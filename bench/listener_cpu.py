"""CPU of the SMTP listener alone per message: aiosmtpd and envoi.mta.listener, no TLS, AUTH or intake.

    .venv/bin/python bench/listener_cpu.py [--n 20000] [--sessions 20] [--rounds 3]
    PYTHONPATH=/tmp/envoi-base .venv/bin/python bench/listener_cpu.py   # another checkout's listener (A/B)
    .venv/bin/python bench/listener_cpu.py --tls   # STARTTLS first, as `envoi smtp` (its dev certificate)

A Listener with hooks that only answer (MAIL, RCPT, DATA) runs on uvloop in a child process (its own
GIL, as `envoi smtp`); a lean client in this process holds `sessions` plain connections and sends each
message as the benchmark's SMTP injector does: MAIL, RCPT, DATA, a ~5 KB body, a command and its reply
at a time (--tls: after STARTTLS, with the server context and dev certificate of `envoi smtp`). Printed per round: the child's CPU (user + system, from /proc) per message in microseconds,
the protocol layer's floor under Submission's checks and the commit (bench/relay_vs_postfix.py's smtp
path adds TLS, compose and intake). Alternate two checkouts with PYTHONPATH for an A/B.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import tempfile

LINE = b"Thank you for your order. Your parcel is on its way and will arrive soon.\r\n"
BODY = b"From: a@bench.example\r\nTo: c@d.example\r\nSubject: s\r\n\r\n" + LINE * 68 + b".\r\n"


def _server(conn, stop, tls_dir: str | None) -> None:
    import uvloop

    from envoi.mta.listener import Listener, SessionOptions
    from envoi.mta.submission.tls import dev_certificate, server_context

    context = server_context(*dev_certificate(tls_dir)) if tls_dir else None

    class Hooks:
        async def handle_MAIL(self, server, session, envelope, address, options):
            envelope.mail_from = address
            return "250 2.1.0 Sender OK"

        async def handle_RCPT(self, server, session, envelope, address, options):
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Recipient OK"

        async def handle_DATA(self, server, session, envelope):
            return "250 2.0.0 Ok: queued"

    async def main() -> None:
        listener = Listener(Hooks(), SessionOptions(
            hostname="bench", ident="bench", data_size_limit=25 << 20, enhanced_status_codes=True,
            command_limits={"MAIL": 10**7, "RCPT": 10**7, "DATA": 10**7, "*": 10}, tls_context=context))
        await listener.open()
        conn.send(listener.port)
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await listener.close()

    uvloop.run(main())


def _send(port: int, n: int, sessions: int, tls: bool) -> None:
    import ssl

    import uvloop

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    async def ehlo(reader, writer) -> None:
        writer.write(b"EHLO bench\r\n")
        while (await reader.readuntil(b"\r\n"))[3:4] == b"-":
            pass

    async def session(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readuntil(b"\r\n")
        await ehlo(reader, writer)
        if tls:
            writer.write(b"STARTTLS\r\n")
            await reader.readuntil(b"\r\n")
            await writer.start_tls(context)
            await ehlo(reader, writer)
        for i in range(count):
            for command in (b"MAIL FROM:<a@bench.example>\r\n", b"RCPT TO:<r%d@d.example>\r\n" % i, b"DATA\r\n", BODY):
                writer.write(command)
                if not (await reader.readuntil(b"\r\n")).startswith((b"250", b"354")):
                    raise RuntimeError("unexpected reply")
        writer.close()

    async def main() -> None:
        await asyncio.gather(*(session(n // sessions) for _ in range(sessions)))

    uvloop.run(main())


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tls", action="store_true", help="STARTTLS before the messages, as envoi smtp")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    stop = ctx.Event()
    tls_dir = tempfile.mkdtemp(prefix="listener-cpu-") if args.tls else None
    child = ctx.Process(target=_server, args=(theirs, stop, tls_dir))
    child.start()
    try:
        port = ours.recv()
        _send(port, 2000, args.sessions, args.tls)  # warm
        for number in range(1, args.rounds + 1):
            before = _cpu(child.pid)
            _send(port, args.n, args.sessions, args.tls)
            n = args.n // args.sessions * args.sessions
            print(f"round {number}: listener {(_cpu(child.pid) - before) * 1e6 / n:.1f} µs CPU per message")
    finally:
        stop.set()
        child.join(10)


if __name__ == "__main__":
    main()
