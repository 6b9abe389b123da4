"""Syscalls, context switches and wake-ups per message, process by process, during a send phase.

    sudo .venv/bin/python bench/syscalls_per_message.py [--window 5] [--delay 2] [--strace] [--checkout DIR] -- \
        --skip-postfix --skip-latency --paths urlencoded --n 8000 --rounds 1

Runs bench/relay_vs_postfix.py with the arguments after `--`; once its first wrk phase has run for
--delay seconds, it records --window seconds of every syscall entry, context switch and wake-up on the
machine (`perf record -a` of raw_syscalls:sys_enter, sched:sched_switch, sched:sched_wakeup: counted in
the kernel, far lighter than strace), or with --strace attaches `strace -c -f` to each process for the
window instead. Each count is divided by the messages of the window: accepted (recipients rows written)
for the API, Postgres, Redis and wrk; delivered (recipients marked delivered) for the relay and the sink.
Also each process's voluntary / involuntary switches from /proc/<pid>/task/*/status and its CPU.
Redis and Postgres are shared with whatever else runs on the machine: only this region's backends are
counted, but redis-server serves every client (read its row as an upper bound on a busy machine).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TICK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def descendants(pid: int) -> list[int]:
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += children(p)
    return seen


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def environ(pid: int) -> dict:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if b"=" in item)


def find_phase(bench_pid: int) -> tuple[int, dict[str, list[int]], str] | None:
    """(wrk pid, {role: pids}, dbname) once a wrk phase of this benchmark runs."""
    tree = descendants(bench_pid)
    wrk = next((p for p in tree if cmdline(p).startswith(("wrk ", "/usr/bin/wrk "))), None)
    if wrk is None:
        return None
    port = re.search(r"http://127\.0\.0\.1:(\d+)", cmdline(wrk)).group(1)
    api = next(p for p in tree if "envoi.cli api" in cmdline(p) and f"127.0.0.1:{port}" in cmdline(p))
    dsn = environ(api)["DATABASE_URL"]
    dbname = re.search(r"dbname=(\S+)", dsn).group(1)
    roles = {"api": [p for p in descendants(api) if p != api] or [api], "api master": [api]}
    for p in tree:
        line = cmdline(p)
        if "envoi.cli relay" in line and environ(p).get("DATABASE_URL") == dsn:
            roles["relay"] = descendants(p)
        elif "smtp-sink" in line:
            roles["smtp-sink"] = [p]
    roles["wrk"] = [wrk]
    redis_pid = subprocess.run(["pgrep", "-x", "redis-server"], capture_output=True, text=True).stdout.split()
    roles["redis"] = [int(p) for p in redis_pid[:1]]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        roles["postgres"] = [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (dbname,))]
    return wrk, roles, dsn


def counts(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*), count(*) FILTER (WHERE status = 'delivered') FROM recipients").fetchone()
    return row[0], row[1]


def task_stats(pids: list[int]) -> dict[int, tuple[int, int, float]]:
    """tid -> (voluntary, involuntary switches, CPU seconds)."""
    out = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                status = (task / "status").read_text()
                stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            vol = int(re.search(r"voluntary_ctxt_switches:\s+(\d+)", status).group(1))
            invol = int(re.search(r"nonvoluntary_ctxt_switches:\s+(\d+)", status).group(1))
            out[int(task.name)] = (vol, invol, (int(stat[11]) + int(stat[12])) / TICK)
    return out


def syscall_names() -> dict[int, str]:
    names = {}
    for path in ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "/usr/include/asm/unistd_64.h"):
        if os.path.exists(path):
            for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)", Path(path).read_text()):
                names[int(m.group(2))] = m.group(1)
            break
    return names


def perf_window(seconds: float, out: Path) -> None:
    subprocess.run(["perf", "record", "-q", "-a", "-o", str(out), "-e", "raw_syscalls:sys_enter",
                    "-e", "sched:sched_switch", "-e", "sched:sched_wakeup", "--", "sleep", str(seconds)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def perf_tally(data: Path, tid_role: dict[int, str]):
    """(syscalls[role][name], switches[role] voluntary, wakeups[(waker role, wakee role)])."""
    names = syscall_names()
    sys_n: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    switch_n: collections.Counter = collections.Counter()
    wake_n: collections.Counter = collections.Counter()
    proc = subprocess.Popen(["perf", "script", "-i", str(data), "-F", "tid,event,trace"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        parts = line.split(None, 2)
        if len(parts) < 3:
            continue
        tid, event, trace = int(parts[0]), parts[1].rstrip(":"), parts[2]
        if event == "raw_syscalls:sys_enter":
            role = tid_role.get(tid)
            if role:
                nr = int(re.search(r"NR (\d+)", trace).group(1))
                sys_n[role][names.get(nr, str(nr))] += 1
        elif event == "sched:sched_switch":
            m = re.search(r"prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+)", trace)
            role = tid_role.get(int(m.group(1)))
            if role:
                switch_n[role, "voluntary" if m.group(2) not in ("R", "R+") else "preempted"] += 1
        elif event == "sched:sched_wakeup":
            m = re.search(r"pid=(\d+)", trace.split("comm=", 1)[1] if "comm=" in trace else trace)
            wakee = tid_role.get(int(m.group(1)))
            if wakee:
                wake_n[tid_role.get(tid, "other" if tid else "irq/idle"), wakee] += 1
    proc.wait()
    return sys_n, switch_n, wake_n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--delay", type=float, default=2.0)
    ap.add_argument("--strace", action="store_true", help="strace -c -f each process instead of perf")
    ap.add_argument("--stacks", default="", help="also record call stacks of this role's futex calls and"
                    " switches (perf record -g), reported by symbol")
    ap.add_argument("--python", default=str(ROOT / ".venv/bin/python"))
    ap.add_argument("--checkout", default=str(ROOT), help="run this checkout's benchmark and region (another"
                    " revision's, for a before/after)")
    args, rest = ap.parse_known_args()
    rest = [a for a in rest if a != "--"]
    tree = Path(args.checkout)
    bench = subprocess.Popen([args.python, str(tree / "bench/relay_vs_postfix.py"), *rest], cwd=tree)
    try:
        found = None
        while found is None:
            if bench.poll() is not None:
                sys.exit("the benchmark ended before a wrk phase")
            time.sleep(0.2)
            found = find_phase(bench.pid)
        time.sleep(args.delay)
        _, roles, dsn = find_phase(bench.pid)
        tid_role, tid_thread = {}, {}
        for role, pids in roles.items():
            for pid in pids:
                for task in Path(f"/proc/{pid}/task").glob("*"):
                    tid_role[int(task.name)] = role
                    with contextlib.suppress(OSError):
                        tid_thread[int(task.name)] = f"{role}/{(task / 'comm').read_text().strip()}"
        all_pids = [p for pids in roles.values() for p in pids]
        before, c0, t0 = task_stats(all_pids), counts(dsn), time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix="syscalls-"))
        if args.strace:
            tracers = {role: subprocess.Popen(["strace", "-c", "-f", "-o", str(tmp / f"{role}.txt"),
                                               *[a for p in pids for a in ("-p", str(p))]],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                       for role, pids in roles.items() if role != "api master"}
            time.sleep(args.window)
            for tracer in tracers.values():
                tracer.send_signal(signal.SIGINT)
            for tracer in tracers.values():
                tracer.wait()
        else:
            stacks = None
            if args.stacks:
                pids = ",".join(str(p) for p in roles[args.stacks])
                stacks = subprocess.Popen(["perf", "record", "-q", "-g", "-o", str(tmp / "stacks.data"), "-p", pids,
                                           "-e", "syscalls:sys_enter_futex", "-e", "sched:sched_switch",
                                           "-e", "syscalls:sys_enter_poll", "-e", "syscalls:sys_enter_getrandom"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            perf_window(args.window, tmp / "perf.data")
            if stacks is not None:
                stacks.send_signal(signal.SIGINT)
                stacks.wait()
                print(f"stacks of {args.stacks}: perf report -i {tmp / 'stacks.data'} --stdio --no-children")
        after, c1, t1 = task_stats(all_pids), counts(dsn), time.monotonic()
        accepted, delivered = c1[0] - c0[0], c1[1] - c0[1]
        print(f"\nwindow {t1 - t0:.1f} s: accepted {accepted} ({accepted / (t1 - t0):.0f}/s), delivered {delivered}"
              f" ({delivered / (t1 - t0):.0f}/s)")
        per = {role: (delivered if role in ("relay", "smtp-sink") else accepted) or 1 for role in roles}
        print("\nper message, from /proc: CPU ms, voluntary and involuntary switches (threads with any)")
        for role, pids in roles.items():
            tids = [t for t in after if tid_role.get(t) == role]
            d = [tuple(a - b for a, b in zip(after[t], before.get(t, (0, 0, 0.0)), strict=True)) for t in tids]
            print(f"  {role:11s} cpu {sum(x[2] for x in d) * 1000 / per[role]:.3f}  vol {sum(x[0] for x in d) / per[role]:.2f}"
                  f"  invol {sum(x[1] for x in d) / per[role]:.2f}  ({len(pids)} processes, {len(tids)} threads)")
        if args.strace:
            for role in roles:
                path = tmp / f"{role}.txt"
                if not path.exists():
                    continue
                print(f"\n{role} (strace -c -f), calls per message:")
                for line in path.read_text().splitlines():
                    cols = line.split()
                    if len(cols) >= 5 and cols[3].isdigit():
                        print(f"  {cols[-1]:16s} {int(cols[3]) / per[role]:.2f}")
            return
        sys_n, switch_n, wake_n = perf_tally(tmp / "perf.data", tid_role)
        thread_n, thread_sw, thread_wake = perf_tally(tmp / "perf.data", tid_thread)
        # perf records for its `sleep` only, not for the seconds it takes to start and stop on a busy machine:
        # its counts are divided by the requests wrk wrote meanwhile (one write each), and the relay's and
        # the sink's by the messages delivered in the same proportion.
        requests = sys_n["wrk"]["write"] or 1
        per = {role: requests * (delivered / (accepted or 1) if role in ("relay", "smtp-sink") else 1) or 1
               for role in roles}
        print(f"\nperf window: {requests} requests written by wrk ({requests / (accepted or 1):.0%} of the window's)")
        accepted = requests
        print("\nsyscalls per message (perf, raw_syscalls:sys_enter)")
        for role in roles:
            if sys_n[role]:
                total = sum(sys_n[role].values())
                top = ", ".join(f"{name} {n / per[role]:.2f}" for name, n in sys_n[role].most_common(12))
                print(f"  {role:11s} {total / per[role]:6.2f}: {top}")
        print("\nswitches per message (perf sched_switch): voluntary / preempted")
        for role in roles:
            v, p = switch_n[role, "voluntary"], switch_n[role, "preempted"]
            if v or p:
                print(f"  {role:11s} {v / per[role]:.2f} / {p / per[role]:.2f}")
        print("\nby thread (role/comm): syscalls; voluntary switches per message")
        for name in sorted(thread_n, key=lambda k: -sum(thread_n[k].values())):
            role = name.split("/")[0]
            top = ", ".join(f"{s} {n / per[role]:.2f}" for s, n in thread_n[name].most_common(8))
            print(f"  {name:28s} {sum(thread_n[name].values()) / per[role]:6.2f} sw {thread_sw[name, 'voluntary'] / per[role]:.2f}: {top}")
        print("\nwake-ups per accepted message by thread (waker -> wakee)")
        for (waker, wakee), n in thread_wake.most_common(30):
            print(f"  {waker:28s} -> {wakee:28s} {n / (accepted or 1):.2f}")
        print("\nwake-ups per accepted message (waker -> wakee)")
        for (waker, wakee), n in wake_n.most_common(25):
            print(f"  {waker:11s} -> {wakee:11s} {n / (accepted or 1):.2f}")
    finally:
        if bench.poll() is None:
            bench.wait()


if __name__ == "__main__":
    main()
