"""The HTTP server's own cost per request, apart from Envoi's code (issue 20).

A trivial falcon app (POST of a ~5 KB urlencoded body, read whole, answered with a small JSON like a
send's) is served by each server configuration in turn and loaded by wrk (keep-alive, 16 connections)
for a fixed time; printed per configuration: requests/s and the server's CPU per request (the server
process and its workers, from /proc), median over the rounds, the configurations interleaved in each
round so a busy machine weighs on all of them alike.

    .venv/bin/python bench/http_server_overhead.py --rounds 3 --seconds 5
    .venv/bin/python bench/http_server_overhead.py --only gthread-2x16,granian-2 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_vs_postfix_lib import cpu_seconds, ensure_wrk, free_port, wait_port  # noqa: E402

APP = '''
import json
import falcon


class Send:
    def on_post(self, req, resp):
        body = req.bounded_stream.read()
        resp.text = json.dumps({"id": "<%d.bench@example.net>" % len(body), "message": "Queued. Thank you."})
        resp.content_type = "application/json"


class Health:
    def on_get(self, req, resp):
        resp.text = '{"status": "ok"}'


def app():
    application = falcon.App()
    application.add_route("/v3/example.net/messages", Send())
    application.add_route("/healthz", Health())
    return application


application = app()
'''

WRK_LUA = '''
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic YXBpOmtleS0xMjM0NQ=="
wrk.body = "from=Bench%20%3Cbench%40example.net%3E&to=rcpt%40d1.example.net&subject=Hello&text=" ..
    string.rep("Hello%20there%2C%20this%20is%20a%20test.%20", 120)
'''


def configurations(python: str) -> dict[str, list[str]]:
    gunicorn = [python, "-m", "gunicorn", "--log-level", "warning", "--graceful-timeout", "1"]
    granian = [python, "-m", "granian", "--interface", "wsgi", "--log-level", "warning", "--no-ws"]
    return {
        "gthread-2x16": [*gunicorn, "--worker-class", "gthread", "--workers", "2", "--threads", "16"],
        "gthread-2x8": [*gunicorn, "--worker-class", "gthread", "--workers", "2", "--threads", "8"],
        "gthread-2x2": [*gunicorn, "--worker-class", "gthread", "--workers", "2", "--threads", "2"],
        "gthread-4x4": [*gunicorn, "--worker-class", "gthread", "--workers", "4", "--threads", "4"],
        "sync-4": [*gunicorn, "--worker-class", "sync", "--workers", "4"],
        "granian-2": [*granian, "--workers", "2"],
        "granian-2-bt4": [*granian, "--workers", "2", "--blocking-threads", "4"],
        "granian-2-bt1": [*granian, "--workers", "2", "--blocking-threads", "1"],
    }


def command(name: str, argv: list[str], port: int) -> list[str]:
    if name.startswith("granian"):
        return [*argv, "--host", "127.0.0.1", "--port", str(port), "bench_trivial_app:application"]
    return [*argv, "--bind", f"127.0.0.1:{port}", "bench_trivial_app:application"]


def measure(wrk: str, script: Path, port: int, pid: int, seconds: float, connections: int) -> tuple[float, float]:
    """(requests/s, server CPU ms per request) over `seconds` of wrk."""
    subprocess.run([wrk, "-t", "1", "-c", str(connections), "-d", "1s", "-s", str(script),
                    f"http://127.0.0.1:{port}/v3/example.net/messages"], capture_output=True, check=True)
    cpu0 = cpu_seconds([pid])
    out = subprocess.run([wrk, "-t", "1", "-c", str(connections), "-d", f"{int(seconds)}s", "-s", str(script),
                          f"http://127.0.0.1:{port}/v3/example.net/messages"],
                         capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds([pid]) - cpu0
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    if "Non-2xx" in out or "Socket errors" in out:
        print(out, file=sys.stderr)
    return requests / seconds, cpu / max(requests, 1) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--only", default="", help="comma-separated configuration names")
    args = parser.parse_args()
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="http-overhead-"))
    (work / "bench_trivial_app.py").write_text(APP)
    script = work / "post.lua"
    script.write_text(WRK_LUA)
    configs = configurations(sys.executable)
    if args.only:
        configs = {name: configs[name] for name in args.only.split(",")}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    print(f"load average at start: {os.getloadavg()}")
    try:
        for r in range(args.rounds):
            names = list(configs) if r % 2 == 0 else list(reversed(configs))
            for name in names:
                port = free_port()
                proc = subprocess.Popen(command(name, configs[name], port), cwd=work, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(work)))
                try:
                    wait_port(port, 30, proc)
                    time.sleep(1.0)  # every worker up
                    rate, ms = measure(wrk, script, port, proc.pid, args.seconds, args.connections)
                    results[name].append((rate, ms))
                    print(f"round {r + 1} {name:15} {rate:8.0f} req/s  {ms * 1000:7.1f} us CPU/request", flush=True)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(10)
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average at end: {os.getloadavg()}")
    print(f"{'configuration':15} {'req/s':>8} {'us CPU/req':>11}   (medians of {args.rounds} rounds)")
    for name, values in results.items():
        if values:
            print(f"{name:15} {statistics.median(v[0] for v in values):8.0f} "
                  f"{statistics.median(v[1] for v in values) * 1000:11.1f}")


if __name__ == "__main__":
    main()
