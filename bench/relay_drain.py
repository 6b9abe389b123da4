"""The relay alone: its CPU and its Postgres backends' CPU per message while it drains a queue.

    .venv/bin/python bench/relay_drain.py [--n 4000] [--rounds 3] [--kind urlencoded] [--baseline CHECKOUT]

In the send-path benchmark (bench/relay_vs_postfix.py) the relay delivers while the API accepts, so
its Postgres share cannot be told from the API's. Here, per round and region (this checkout, and
--baseline's, taking turns going first): a private region (`envoi api` + `envoi relay` to Postfix's
smtp-sink) is warmed with 500 messages, the relay is paused (SIGSTOP), n messages are accepted through
the API (wrk), the queue tables are vacuumed, and the relay is resumed (SIGCONT) until the sink has
them all. Measured over that drain only, with the API idle: the relay's CPU (its threads included),
the CPU of the region's Postgres backends (the API's do nothing meanwhile) and transactions, per
message, and the drain rate. `--baseline . --baseline-env ENVOI_RELAY_SIGNERS=1` compares a setting
instead of a revision. The relay holds no lease while paused between deliveries (it was idle).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_vs_postfix_lib import (  # noqa: E402
    ROOT,
    EnvoiStack,
    SmtpSink,
    cpu_seconds,
    inject_wrk,
    log,
    warm_then_pause_relay,
)


def thread_names(pid: int) -> dict[int, str]:
    """Native thread id -> Python thread name without its number (py-spy dump), {} if py-spy is missing."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    try:
        dump = subprocess.run([pyspy, "dump", "--json", "--nonblocking", "--pid", str(pid)], capture_output=True,
                              text=True, timeout=30).stdout
        return {t["os_thread_id"]: (t.get("thread_name") or "?").rstrip("0123456789_")
                for t in json.loads(dump) if t.get("os_thread_id")}
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}


def thread_cpu(pid: int, names: dict[int, str]) -> dict[str, float]:
    """CPU seconds of a process's live threads so far, summed by thread name (the event loop, the DKIM
    signers, asyncio's to_thread pool ...)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = names.get(int(task.name)) or "thread " + task.name
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + sum(int(x) for x in fields[11:13]) / tick
    return out


def thread_switches(pid: int, names: dict[int, str]) -> dict[str, int]:
    """Context switches (voluntary + involuntary) of a process's live threads so far, summed by thread name:
    each GIL hand-off or thread hop that sleeps is one."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = names.get(int(task.name)) or "thread " + task.name
            status = (task / "status").read_text()
        except OSError:
            continue
        n = sum(int(line.split()[1]) for line in status.splitlines() if line.endswith("ctxt_switches", 0,
                                                                                     line.find(":")))
        out[name] = out.get(name, 0) + n
    return out


def drain(root: Path, name: str, n: int, kind: str, env: dict[str, str], profile: str | None = None,
          native: bool = False, threads: bool = False) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="envoi-drain-"))
    sink = SmtpSink(workdir).start()
    envoi = EnvoiStack(workdir / "envoi", sink.port, processes=("relay", "api"), root=root, extra_env=env)
    try:
        relay = warm_then_pause_relay(envoi.setup(), sink)
        try:
            accepted0 = envoi.accepted()
            inject_wrk(envoi.api_port, envoi.api_key, kind, n, f"drain-{uuid.uuid4().hex[:6]}")
            count = envoi.accepted() - accepted0
            envoi.vacuum()
            base = sink.count()
            xacts0 = envoi.transactions()
            names = thread_names(relay)
            cpu0, pg0, threads0 = cpu_seconds([relay]), envoi.postgres_cpu(), thread_cpu(relay, names)
            switches0 = thread_switches(relay, names)
            spy = None
            if profile:  # py-spy on the relay for the drain only: the thread holding the GIL (Python CPU)
                pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                # --gil: the thread holding the GIL; threads: every thread on a CPU (the RSA signatures, which
                # release the GIL, included), named by thread id (--threads)
                # (native frames need the process paused while sampled: py-spy refuses --native with --nonblocking)
                spy = subprocess.Popen([pyspy, "record", "--pid", str(relay), "-r", "250", "-f", "raw", "-o", profile]
                                       + (["--threads"] if threads else ["--gil"])
                                       + (["--native"] if native else ["--nonblocking"]),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)
        finally:
            os.kill(relay, signal.SIGCONT)
        t0 = time.time()
        t1 = sink.wait_count(base + count)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        relay_ms = (cpu_seconds([relay]) - cpu0) * 1000 / count
        threads = {k: (v - threads0.get(k, 0.0)) * 1000 / count for k, v in thread_cpu(relay, names).items()}
        switches = {k: (v - switches0.get(k, 0)) / count for k, v in thread_switches(relay, names).items()}
        pg_ms = (envoi.postgres_cpu() - pg0) * 1000 / count
        xacts = (envoi.transactions() - xacts0) / count
        result = {"name": name, "n": count, "rate": count / (t1 - t0), "relay_ms": relay_ms, "pg_ms": pg_ms,
                  "xacts": xacts}
        log(f"{name}: drained {count} in {t1 - t0:.1f}s ({result['rate']:.0f} msg/s): relay {relay_ms:.3f} ms/msg,"
            f" postgres {pg_ms:.3f} ms/msg, {xacts:.3f} transactions/msg; relay threads ms/msg: "
            + ", ".join(f"{k} {v:.3f}" for k, v in sorted(threads.items(), key=lambda kv: -kv[1]) if v >= 0.005)
            + f"; context switches per message: {sum(switches.values()):.2f} ("
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(switches.items(), key=lambda kv: -kv[1]) if v >= 0.01)
            + ")")
        result["switches"] = sum(switches.values())
        return result
    finally:
        envoi.stop()
        sink.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kind", default="urlencoded", help="a wrk_messages.lua kind (how the queue is filled)")
    parser.add_argument("--baseline", metavar="CHECKOUT", help="another checkout, drained in the same run")
    parser.add_argument("--baseline-env", metavar="KEY=VALUE", action="append", default=[],
                        help="a setting of the baseline region only (with --baseline . : a setting A/B)")
    parser.add_argument("--profile", metavar="FILE", help="py-spy record (raw, folded stacks) of this checkout's"
                        " relay during its drains (--gil: Python CPU; the last round's is kept)")
    parser.add_argument("--profile-native", action="store_true", help="--profile with native frames (C, Cython)")
    parser.add_argument("--profile-threads", action="store_true", help="--profile of every thread on a CPU, not"
                        " only the one holding the GIL (the threads' own CPU: the RSA signatures in the signers)")
    args = parser.parse_args()
    envs = {"envoi": {}, "baseline": dict(kv.split("=", 1) for kv in args.baseline_env)}
    roots = {"envoi": ROOT} | ({"baseline": Path(args.baseline).resolve()} if args.baseline else {})
    log(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict[str, list[dict]] = {name: [] for name in roots}
    for r in range(1, args.rounds + 1):
        order = list(roots) if r % 2 else list(reversed(roots))
        for name in order:
            results[name].append(drain(roots[name], f"r{r} {name}", args.n, args.kind, envs[name],
                                       args.profile if name == "envoi" else None, args.profile_native,
                                       args.profile_threads))
    print(f"\n# relay_drain: n={args.n} ({args.kind}), load average at the end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'region':10} {'relay ms/msg per round':32} {'postgres ms/msg per round':32} {'xacts/msg':16} msg/s")
    for name, rows in results.items():
        cols = [", ".join(format(x[key], fmt) for x in rows)
                for key, fmt in (("relay_ms", ".3f"), ("pg_ms", ".3f"), ("xacts", ".3f"), ("rate", ".0f"))]
        print(f"{name:10} {cols[0]:32} {cols[1]:32} {cols[2]:16} {cols[3]}")
        relay = statistics.median(x["relay_ms"] for x in rows)
        pg = statistics.median(x["pg_ms"] for x in rows)
        print(f"{'':10} median relay {relay:.3f}, postgres {pg:.3f}")

if __name__ == "__main__":
    main()
