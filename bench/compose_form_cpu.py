"""CPU of compose() per message for the send benchmark's form fields, a new recipient each (as wrk sends them).

    .venv/bin/python bench/compose_form_cpu.py [--n 5000] [--rounds 5]
    PYTHONPATH=/tmp/envoi-base .venv/bin/python bench/compose_form_cpu.py    # another checkout's compose

compose() in this process (no server, no database) of bench/wrk_messages.lua's urlencoded fields: a
display-name From, one bare `to` address that differs per message (so per-address caches miss, as in
the benchmark), a subject, the ~5 KB text and an o:tag. Printed: the best round, in microseconds of
process CPU per message. bench/compose_cpu.py compares the body writers on fixed fields instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_accept_cpu import TEXT  # noqa: E402

from envoi.mta.compose import compose  # noqa: E402


def fields(i: int) -> dict[str, list[str]]:
    return {"from": ["Bench <bench@bench.test>"], "to": [f"rcpt{i}@d{i % 1000:03d}.example.net"],
            "subject": [f"Bench message {i}"], "text": [TEXT], "o:tag": ["bench"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    best = float("inf")
    for r in range(args.rounds):
        todo = [fields(r * args.n + i) for i in range(args.n)]
        start = time.process_time()
        for f in todo:
            compose("bench.test", f, [], [], max_bytes=25 << 20)
        best = min(best, (time.process_time() - start) / args.n * 1e6)
    import envoi
    print(f"compose, form fields, a new recipient each ({Path(envoi.__file__).parent.parent}): {best:.1f} us/message")


if __name__ == "__main__":
    main()
