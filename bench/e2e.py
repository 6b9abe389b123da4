"""End-to-end through the HTTP API: accept rate, delivery rate and accept->delivered latency.

    .venv/bin/python bench/e2e.py [--n 10000] [--concurrency 16] [--rate MSG_PER_S] [--api-workers 2]

Starts a private Envoi region (own database and Redis db; `envoi api` + `envoi relay` with
ENVOI_SMTP_ROUTE to Postfix's counting `smtp-sink`; domain key RSA-2048), POSTs N ~5 KB messages
(1,000 recipient domains) to /v3/<domain>/messages.mime with `--concurrency` keep-alive clients
(optionally paced at `--rate`), and prints accepted msg/s (injection), delivered msg/s (first
request until the sink counted all N) and the accept->delivered p50/p99 from Postgres.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_vs_postfix_lib import (  # noqa: E402
    EnvoiStack,
    SmtpSink,
    cpu_seconds,
    ensure_postfix,
    inject_http,
    log,
    make_messages,
    percentile,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=float, default=None, help="pace the requests at this many msg/s")
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--api-threads", type=int, default=8)
    parser.add_argument("--relay-connections", type=int, default=50)
    args = parser.parse_args()
    ensure_postfix()  # for smtp-sink
    workdir = Path(tempfile.mkdtemp(prefix="envoi-e2e-"))
    sink = SmtpSink(workdir).start()
    envoi = EnvoiStack(workdir, sink.port, relay_connections=args.relay_connections, api_workers=args.api_workers,
                       api_threads=args.api_threads, processes=("relay", "api"))
    try:
        envoi.setup().start()
        run = f"e2e-{uuid.uuid4().hex[:6]}"
        messages = make_messages(args.n, run)
        pids = [p.pid for p in envoi.procs.values()]
        cpu0, pg0 = cpu_seconds(pids), envoi.postgres_cpu()
        log(f"posting {args.n} messages, concurrency {args.concurrency}"
            + (f", paced at {args.rate:.0f} msg/s" if args.rate else ""))
        t0 = time.time()
        seconds, errors = inject_http(envoi.api_port, envoi.api_key, messages, args.concurrency, args.rate)
        t1 = sink.wait_count(args.n)
        cpu, pg = cpu_seconds(pids) - cpu0, envoi.postgres_cpu() - pg0
        lat = envoi.latencies(run)
    finally:
        envoi.stop()
        sink.stop()
    print(f"# e2e: n={args.n} x ~5 KB via POST /messages.mime, concurrency={args.concurrency}, "
          f"api {args.api_workers} workers x {args.api_threads} threads, relay {args.relay_connections} sessions, "
          f"DKIM RSA-2048" + (f", paced at {args.rate:.0f} msg/s" if args.rate else ""))
    print(f"accepted_msg_per_s={args.n / seconds:.0f} delivered_msg_per_s={args.n / (t1 - t0):.0f} "
          f"errors={errors} p50_s={percentile(lat, 50):.3f} p99_s={percentile(lat, 99):.3f} "
          f"envoi_cpu_ms_per_msg={cpu * 1000 / args.n:.2f} postgres_cpu_ms_per_msg={pg * 1000 / args.n:.2f}")


if __name__ == "__main__":
    main()
