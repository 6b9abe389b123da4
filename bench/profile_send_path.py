"""Where the send path's time goes: py-spy on Envoi's API workers and relay while wrk posts form fields.

    sudo .venv/bin/python bench/profile_send_path.py [--kind urlencoded] [--n 6000] [--out /tmp/prof]
    sudo .venv/bin/python bench/profile_send_path.py --html [--tracking] ...   # issue 18's tracked send

--html sends relay_vs_postfix_lib's 10-link HTML body beside the text (API kinds); --tracking (implies --html)
sets the region up as relay_vs_postfix.py --webhooks does (open, click and unsubscribe on, `delivered`
subscribed, to a URL nothing answers: no dispatcher runs, the outbox rows wait), so the API's and the relay's
share of tracking is seen against the same run with --html alone.

Starts a private region (as bench/relay_vs_postfix.py does: own database, Redis db, `envoi api` and
`envoi relay` relaying to Postfix's smtp-sink), warms it, then records `py-spy record -f raw`
(--subprocesses --gil: samples of the thread holding the GIL, i.e. Python CPU) of `envoi api` (granian by
default, its worker processes followed; ENVOI_API_SERVER=gunicorn for gunicorn's) and of the relay while wrk
sends n messages. Under granian only the Python side is sampled (connections, HTTP parsing and writing the
response happen in its Rust threads without the GIL); bench/api_accept_cpu.py --profile samples the app
alone in one process at a higher rate. Prints
each process's top frames by own time and a per-stage table (samples whose stack passes through a
stage's function); the raw folded stacks stay in --out for flame graphs.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_vs_postfix_lib import (  # noqa: E402
    EnvoiStack,
    SmtpSink,
    inject_batch,
    inject_http,
    inject_smtp,
    inject_wrk,
    log,
    make_messages,
)

# stage -> substrings of a frame ("function (file)") any of which puts a sample in that stage; the
# first stage that matches a stack (innermost frame outwards) wins.
STAGES = {
    "api": [
        ("form parsing", ("envoi/api/forms.py", "multipart", "falcon/media", "get_media", "parse_qs")),
        ("auth", ("envoi/api/auth.py",)),
        ("tracking render", ("envoi/mta/tracking.py",)),
        ("compose", ("envoi/mta/compose.py", "email/", "envoi/mta/mime")),
        ("intake commit", ("envoi/mta/intake.py", "group_commit", "psycopg")),
        ("events", ("events",)),
        ("http server/falcon", ("gunicorn", "granian", "falcon")),
    ],
    "smtp": [
        ("TLS", ("ssl.py", "sslproto", "_ssl")),
        ("auth", ("authenticate", "argon2")),
        ("compose", ("envoi/mta/compose.py", "email/", "envoi/mta/mime")),
        ("intake commit", ("envoi/mta/intake.py", "group_commit", "psycopg", "stage.py")),
        ("submission checks", ("envoi/mta/submission",)),
        ("aiosmtpd", ("aiosmtpd", "envoi/mta/listener")),
        ("event loop", ("asyncio", "uvloop")),
    ],
    "relay": [
        ("sign (DKIM)", ("dkim", "cryptography", "rsa")),
        ("claim", ("claim",)),
        ("outcome write", ("outcome", "record_")),
        ("events", ("events",)),
        ("SMTP", ("smtp", "asyncio", "uvloop")),
        ("postgres", ("psycopg",)),
    ],
}


def summarize(raw: Path, stages: list) -> None:
    own, by_stage, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in reversed(frames):
            stage = next((name for name, keys in stages if any(k in frame for k in keys)), None)
            if stage:
                by_stage[stage] += n
                break
        else:
            by_stage["other"] += n
    print(f"\n## {raw.name}: {total} samples")
    for stage, n in by_stage.most_common():
        print(f"  {stage:20} {100 * n / total:5.1f}%")
    print("  top frames by own time:")
    for frame, n in own.most_common(15):
        print(f"    {100 * n / total:5.1f}%  {frame[:150]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="urlencoded", help="a wrk_messages.lua kind, batch (n / 1000 POSTs of "
                        "1,000 recipients), or smtp (SMTP submission: STARTTLS + AUTH, 20 sessions; profiles `envoi smtp`)")
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--out", default=None)
    parser.add_argument("--html", action="store_true", help="a 10-link HTML body beside the text (API kinds)")
    parser.add_argument("--tracking", action="store_true", help="open/click/unsubscribe on, `delivered` "
                        "subscribed (as relay_vs_postfix.py --webhooks; implies --html)")
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = Path(args.out or tempfile.mkdtemp(prefix="envoi-prof-"))
    out.mkdir(parents=True, exist_ok=True)
    tag = args.kind + ("-tracking" if args.tracking else "-html" if args.html else "")
    workdir = Path(tempfile.mkdtemp(prefix="envoi-prof-"))
    sink = SmtpSink(workdir).start()
    front = "smtp" if args.kind == "smtp" else "api"
    html = args.html or args.tracking
    envoi = EnvoiStack(workdir / "envoi", sink.port, processes=("relay", front),
                       webhook_url="http://127.0.0.1:9/hook" if args.tracking else "")
    try:
        envoi.setup().start()
        base = sink.count()
        warm = make_messages(1000, f"warm-{uuid.uuid4().hex[:6]}")
        if front == "smtp":
            inject_smtp(envoi.smtp_port, warm, 20, auth=(envoi.smtp_login, envoi.smtp_password), starttls=True)
        else:
            inject_http(envoi.api_port, envoi.api_key, warm, 16)
        sink.wait_count(base + 1000)
        envoi.vacuum()
        spies = {name: subprocess.Popen([pyspy, "record", "--pid", str(envoi.procs[name].pid), "--subprocesses", "--gil",
                                         "-r", "200", "-f", "raw", "-o", str(out / f"{name}-{tag}.txt")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name in (front, "relay")}
        if args.kind == "smtp":
            seconds = inject_smtp(envoi.smtp_port, make_messages(args.n, f"prof-{uuid.uuid4().hex[:6]}"), 20,
                                  auth=(envoi.smtp_login, envoi.smtp_password), starttls=True)
            log(f"smtp: {args.n / seconds:.0f} msg/s accepted")
        elif args.kind == "batch":
            seconds, _, _ = inject_batch(envoi.api_port, envoi.api_key, max(1, args.n // 1000), "prof-batch",
                                         html=html)
            log(f"batch: {args.n / seconds:.0f} recipients/s accepted")
        else:
            res = inject_wrk(envoi.api_port, envoi.api_key, args.kind, args.n, f"prof-{uuid.uuid4().hex[:6]}",
                             html=html)
            log(f"{args.kind}: {args.n / res.seconds:.0f} msg/s accepted, p99 {res.p99_ms:.0f} ms")
        for spy in spies.values():
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
    finally:
        envoi.stop()
        sink.stop()
    for name in (front, "relay"):
        summarize(out / f"{name}-{tag}.txt", STAGES[name])
    print(f"\nraw folded stacks: {out}")


if __name__ == "__main__":
    main()
