"""CPU of the relay's prepare stage per message (open the sealed body, DKIM-sign it, make the wire bytes),
in process, with the real RSA signature and the relay's signer threads.

    .venv/bin/python bench/prepare_cpu.py [--signers 2] [--n 400] [--rounds 3] [--pairs 4] [--loop-work US]
        [--baseline CHECKOUT]

N distinct ~5 KB messages shaped like bench/relay_vs_postfix.py's urlencoded ones (compose() of
from/to/subject/text/o:tag), sealed as intake seals them, go through Preparer.prepare in claims of 50
(as end to end) with `--signers` threads (0: in this thread); printed: the process's CPU per message,
best and median of the rounds. With --baseline, this checkout and CHECKOUT run in alternating
subprocesses (`--pairs` of each, PYTHONPATH set), so a change is compared under the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def signer_cpu() -> float:
    """CPU seconds so far of this process's DKIM signer threads (named dkim_N by the Preparer's pool)."""
    import threading

    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for thread in threading.enumerate():
        if thread.name.startswith("dkim") and thread.native_id:
            try:
                fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def _busy_loop(stop: asyncio.Event, work_us: float) -> None:
    """The event loop's own work beside the signers (the relay's SMTP sessions): Python for work_us, then
    a turn of the loop, over and over; the signers have to win the GIL from it."""
    while not stop.is_set():
        end = time.perf_counter() + work_us / 1e6
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(0)


def measure(signers: int, n: int, rounds: int, loop_work: float = 0.0) -> list[float]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from envoi.infra.crypto import Sealer
    from envoi.mta.compose import compose
    from envoi.mta.delivery.claim import DomainKeys
    from envoi.mta.delivery.prepare import Preparer

    line = "Thank you for your order. Your parcel is on its way and will arrive soon.\r\n"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    sealer = Sealer(os.urandom(32))
    sealed = []
    for i in range(n):
        fields = {"from": ["Bench <bench@bench.test>"], "to": [f"rcpt{i}@d{i % 1000:03d}.example.net"],
                  "subject": [f"Bench message {i}"], "text": [line * 66], "o:tag": ["drain"]}
        sealed.append(sealer.seal(compose("bench.test", fields, [], []).copies[0].mime, f"k{i}".encode()))
    keys = DomainKeys({"id": 1}, pem, None, "bench.test", "s1")
    preparer = Preparer(sealer, lambda _: keys, signers=signers)
    out = []

    async def once() -> None:
        messages = [{"id": i, "body": s, "storage_key": f"k{i}", "options": {}, "dkim_signature": None,
                     "domain_id": 1} for i, s in enumerate(sealed)]
        preparer.signatures.clear()  # every round signs every message
        stop = asyncio.Event()
        busy = asyncio.create_task(_busy_loop(stop, loop_work)) if loop_work else None
        started, signers_started = time.process_time(), signer_cpu()
        for i in range(0, n, 50):
            await preparer.prepare(messages[i : i + 50])
        # With a busy loop beside them, only the signer threads' own CPU (the loop's work is a constant).
        out.append(((signer_cpu() - signers_started) if busy else (time.process_time() - started)) / n * 1e6)
        if busy:
            stop.set()
            await busy
        assert all(isinstance(m["data"], bytes) for m in messages)

    async def main() -> None:
        await once()  # warm-up
        out.clear()
        for _ in range(rounds):
            await once()

    asyncio.run(main())
    preparer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--signers", type=int, default=2)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--baseline", metavar="CHECKOUT")
    parser.add_argument("--loop-work", type=float, default=0.0, metavar="US",
                        help="keep the event loop busy beside the signers (Python for US microseconds per turn)"
                        " and print the signer threads' CPU only (needs --signers > 0)")
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.baseline:
        times = measure(args.signers, args.n, args.rounds, args.loop_work)
        print(f"{min(times):.1f} {statistics.median(times):.1f}" if args.quiet else
              f"signers={args.signers}: {min(times):.1f} us/msg best, {statistics.median(times):.1f} median "
              f"({', '.join(f'{t:.0f}' for t in times)})")
        return
    roots = {"this": ROOT, "baseline": Path(args.baseline).resolve()}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in roots}
    for pair in range(args.pairs):
        for name in (roots if pair % 2 == 0 else reversed(list(roots))):
            env = {**os.environ, "PYTHONPATH": str(roots[name])}
            line = subprocess.run([sys.executable, __file__, "--signers", str(args.signers), "--n", str(args.n),
                                   "--rounds", str(args.rounds), "--loop-work", str(args.loop_work), "--quiet"], env=env, capture_output=True,
                                  text=True, check=True).stdout.split()
            results[name].append((float(line[0]), float(line[1])))
            print(f"pair {pair + 1} {name:8}: {line[0]} us/msg best, {line[1]} median", flush=True)
    for name, rows in results.items():
        print(f"{name:8} signers={args.signers}: best per pair {', '.join(f'{b:.0f}' for b, _ in rows)}; "
              f"median of the medians {statistics.median(m for _, m in rows):.0f} us/msg")


if __name__ == "__main__":
    main()
