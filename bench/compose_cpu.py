"""CPU of compose() per message, the byte-level body writer against the email package, in one run.

    .venv/bin/python bench/compose_cpu.py [--n 2000] [--rounds 5]

compose() in this process (no server, no database) for the send API's common shapes: the ~5 KB text
message of bench/relay_vs_postfix.py (from/to/subject/text/o:tag), the same with an html alternative,
with a 2 KB attachment, a non-ASCII one, and a 1,000-recipient batch send (per recipient). Each shape
alternates between envoi.mta.compose.FAST_BODY on (envoi.mta.mime_body) and off (the email package)
round by round; printed: the best round of each, in microseconds per message (or per recipient), and
the ratio. The bytes are the same either way (tests/unit/mta/test_mime_body.py).
"""

from __future__ import annotations

import argparse
import json
import time

from envoi.mta import compose as compose_module
from envoi.mta.compose import Upload, compose

LINE = "Hello there, thank you for your order. Your parcel is on its way and should arrive soon.\r\n"
TEXT = LINE * (5000 // len(LINE) + 1)
BASE = {"from": ["Bench <bench@bench.test>"], "to": ["rcpt1@d001.example.net"], "subject": ["Your order 42"],
        "text": [TEXT], "o:tag": ["bench"]}


def shapes() -> dict[str, tuple[dict, list[Upload], int]]:
    batch_rcpts = [f"r{i}@d{i % 1000:03d}.example.net" for i in range(1000)]
    return {
        "text (5 KB)": (BASE, [], 1),
        "text + html": ({**BASE, "html": [f"<html><body><p>{TEXT}</p></body></html>"]}, [], 1),
        "text + 2 KB attachment": (BASE, [Upload("invoice.pdf", "application/pdf", bytes(range(256)) * 8)], 1),
        "non-ASCII text + html": ({**BASE, "subject": ["Grüße — Ihre Bestellung"], "text": [TEXT.replace("a", "ä")],
                                   "html": ["<p>Grüße</p>"]}, [], 1),
        "batch, per recipient": ({**BASE, "to": [",".join(batch_rcpts)], "subject": ["Your order, %recipient.name%"],
                                  "text": [TEXT.replace("Hello there", "Hello %recipient.name%")],
                                  "recipient-variables": [json.dumps({r: {"name": f"Customer {i}"}
                                                                      for i, r in enumerate(batch_rcpts)})]}, [], 1000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="messages per round (batch: n // 100 sends)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for name, (fields, uploads, per) in shapes().items():
        times = {True: [], False: []}
        runs = max(1, args.n // 100) if per > 1 else args.n
        for _ in range(args.rounds):
            for fast in (True, False):
                compose_module.FAST_BODY = fast
                start = time.process_time()
                for _ in range(runs):
                    compose("bench.test", fields, uploads, [])
                times[fast].append((time.process_time() - start) / (runs * per) * 1e6)
        compose_module.FAST_BODY = True
        new, old = min(times[True]), min(times[False])
        unit = "recipient" if per > 1 else "message"
        print(f"{name:28s} byte writer {new:7.1f} us/{unit}   email package {old:7.1f} us/{unit}   ({old / new:.2f}x)")


if __name__ == "__main__":
    main()
