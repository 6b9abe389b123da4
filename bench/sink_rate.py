"""How many small messages per second the sink takes (store=False) from N aiosmtplib connections.

    .venv/bin/python bench/sink_rate.py [--connections 20] [--messages 20000] [--no-rset]

The sink runs in a child process so client and server do not share one GIL; the rate is taken
from the sink's own counter over the sending window. The client side usually costs as much CPU
as the sink, so the script also prints the sink's capacity: messages per second of sink CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time

import aiosmtplib

from envoi.dev.sink import Sink

MESSAGE = (
    b"From: bench@sender.test\r\nTo: rcpt@sink.test\r\nSubject: bench\r\n"
    b"Message-ID: <bench@sender.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
    + b"Hello from the sink benchmark.\r\n" * 20
)


def _run_sink(conn, stop) -> None:
    with Sink(store=False) as sink:
        conn.send(sink.smtp_port)
        cpu = time.process_time()
        stop.wait()
        conn.send((sink.stats(), time.process_time() - cpu))


async def _connection(port: int, count: int, rset: bool) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    for _ in range(count):
        await client.sendmail("bench@sender.test", ["rcpt@sink.test"], MESSAGE)
        if rset:
            await client.rset()  # as the delivery engine does between messages on a reused session
    await client.quit()


async def _send_all(port: int, connections: int, messages: int, rset: bool) -> None:
    per_conn = messages // connections
    await asyncio.gather(*(_connection(port, per_conn, rset) for _ in range(connections)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--no-rset", action="store_true", help="do not send RSET between messages")
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    stop = ctx.Event()
    proc = ctx.Process(target=_run_sink, args=(there, stop), daemon=True)
    proc.start()
    port = here.recv()

    started = time.perf_counter()
    asyncio.run(_send_all(port, args.connections, args.messages, not args.no_rset))
    elapsed = time.perf_counter() - started
    stop.set()
    stats, sink_cpu = here.recv()
    proc.join()

    n = stats["messages"]
    print(f"{n} messages over {args.connections} connections in {elapsed:.2f}s: {n / elapsed:,.0f} msg/s"
          f" ({'no RSET' if args.no_rset else 'RSET between messages'});"
          f" sink CPU {sink_cpu:.2f}s = capacity {n / sink_cpu:,.0f} msg/s per core")


if __name__ == "__main__":
    main()
