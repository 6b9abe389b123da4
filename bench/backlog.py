"""A large backlog: relay memory while the destination refuses, API latency meanwhile, then drain rate.

    .venv/bin/python bench/backlog.py [--n 1000000] [--per-message 100] [--refuse-seconds 60]
                                      [--drain-seconds 90]

1. A private Envoi region (own database and Redis db; `envoi relay` with ENVOI_SMTP_ROUTE to
   Postfix's `smtp-sink`, `envoi api`). N recipients are queued with SQL (messages cloned from one
   accepted ~5 KB message and sealed again, `per-message` recipients each at distinct domains;
   recipients by INSERT ... SELECT generate_series), all due now.
2. The sink answers every RCPT with 4xx (`smtp-sink -r rcpt`) for `refuse-seconds`: the relay
   works through the backlog, rescheduling; its RSS is sampled (VmRSS) and the API is asked to
   accept messages meanwhile (latency of each POST).
3. The sink accepts again; every queued recipient is made due (as when its retry time comes) and
   the drain rate is measured over `drain-seconds` (or until empty).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_vs_postfix_lib import (  # noqa: E402
    DOMAIN,
    NDOMAINS,
    EnvoiStack,
    SmtpSink,
    cpu_seconds,
    ensure_postfix,
    inject_http,
    log,
    make_messages,
    rss_mb,
)


def fill(envoi: EnvoiStack, n: int, per_message: int) -> float:
    """Queue n recipients; return the seconds it took."""
    from envoi import runtime
    from envoi.accounts.service import Principal
    from envoi.mta.compose import compose

    started = time.monotonic()
    services = runtime.build(envoi.settings(), pool_size=2)
    try:
        principal = Principal(None, envoi.account["id"], "admin")
        domain = services.accounts.get_domain(DOMAIN)
        text = "Thank you for your order. Your parcel is on its way and will arrive soon.\n" * 65
        values = {"from": [f"bench@{DOMAIN}"], "to": ["template@d000.example.net"], "subject": ["Backlog"],
                  "text": [text]}
        template_id = services.intake.accept(principal, domain, compose(DOMAIN, values, [], []))
        sealer = services.sealer
        with envoi.connect() as conn:
            template = conn.execute("SELECT * FROM messages WHERE message_id = %s",
                                    (template_id.strip("<>"),)).fetchone()
            conn.execute("DELETE FROM recipients WHERE message_pk = %s", (template["id"],))
            body = sealer.open(template["body"], template["storage_key"].encode())
            nmessages = (n + per_message - 1) // per_message
            cols = ["account_id", "domain_id", "message_id", "storage_key", "mail_from", "headers", "method",
                    "size", "body", "body_expires_at"]
            with conn.cursor() as cur, cur.copy(f"COPY messages ({', '.join(cols)}) FROM STDIN") as copy:
                for i in range(nmessages):
                    key = f"backlog-{uuid.uuid4().hex}"
                    copy.write_row((template["account_id"], template["domain_id"], f"backlog.{i}@{DOMAIN}", key,
                                    template["mail_from"], __import__("json").dumps(template["headers"]),
                                    template["method"], template["size"], sealer.seal(body, key.encode()),
                                    template["body_expires_at"]))
            log(f"{nmessages} messages stored ({time.monotonic() - started:.0f}s)")
            ids = [r["id"] for r in conn.execute(
                "SELECT id FROM messages WHERE message_id LIKE 'backlog.%%' ORDER BY id").fetchall()]
            conn.execute(
                "INSERT INTO recipients (message_pk, account_id, domain_id, address, rcpt_domain, next_attempt_at,"
                " expires_at)"
                " SELECT (%(ids)s::bigint[])[g / %(per)s + 1], %(account)s, %(domain)s,"
                "   'r' || g || '@d' || lpad((g %% %(nd)s)::text, 3, '0') || '.example.net',"
                "   'd' || lpad((g %% %(nd)s)::text, 3, '0') || '.example.net', now(), now() + interval '5 days'"
                " FROM generate_series(0, %(n)s - 1) AS g",
                {"ids": ids, "per": per_message, "account": template["account_id"], "domain": template["domain_id"],
                 "nd": NDOMAINS, "n": n})
            conn.execute("ANALYZE recipients")
    finally:
        services.close()
    return time.monotonic() - started


def queued(envoi: EnvoiStack) -> int:
    with envoi.connect() as conn:
        return conn.execute("SELECT count(*) AS n FROM recipients WHERE status = 'queued'").fetchone()["n"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--per-message", type=int, default=100)
    parser.add_argument("--refuse-seconds", type=float, default=60)
    parser.add_argument("--drain-seconds", type=float, default=90)
    parser.add_argument("--relay-connections", type=int, default=50)
    parser.add_argument("--signers", type=int, default=2, help="ENVOI_RELAY_SIGNERS (signing threads)")
    args = parser.parse_args()
    ensure_postfix()
    workdir = Path(tempfile.mkdtemp(prefix="envoi-backlog-"))
    refusing = SmtpSink(workdir, extra=("-r", "rcpt")).start()
    envoi = EnvoiStack(workdir, refusing.port, processes=("relay", "api"), relay_connections=args.relay_connections,
                       extra_env={"ENVOI_RETRY_SCHEDULE": "600", "ENVOI_RELAY_SIGNERS": str(args.signers)})
    try:
        envoi.setup()
        log(f"queueing {args.n} recipients with SQL")
        fill_s = fill(envoi, args.n, args.per_message)
        log(f"queued {args.n} recipients in {fill_s:.0f}s")
        envoi.start()
        relay = envoi.procs["relay"].pid
        rss, api_ms = [], []
        probe = make_messages(200, f"probe-{uuid.uuid4().hex[:6]}")
        deadline = time.monotonic() + args.refuse_seconds
        i = 0
        while time.monotonic() < deadline:
            rss.append(rss_mb(relay))
            t = time.monotonic()
            _, errors = inject_http(envoi.api_port, envoi.api_key, probe[i % 200:i % 200 + 1], 1)
            api_ms.append((time.monotonic() - t) * 1000 + (1e9 if errors else 0))
            i += 1
            time.sleep(0.5)
        with envoi.connect() as conn:
            tried = conn.execute("SELECT count(*) AS n FROM recipients WHERE status = 'queued' AND attempts > 0"
                                 ).fetchone()["n"]
        log(f"refusing phase: {tried} recipients tried and rescheduled; relay RSS max {max(rss):.0f} MB")
        refusing.stop()
        sink = SmtpSink(workdir, port=refusing.port).start()
        # Refused recipients are due again at once. Those in flight at the switch get their 4xx
        # recorded a moment later (rescheduled by ENVOI_RETRY_SCHEDULE): the drain loop keeps
        # making them due, so the drain is not cut short by the refusal's tail.
        due_again = ("UPDATE recipients SET next_attempt_at = now() WHERE status = 'queued' AND attempts > 0"
                     " AND next_attempt_at > now()")
        with envoi.connect() as conn:
            conn.execute(due_again)
        before = queued(envoi)
        cpu0 = cpu_seconds([relay])
        t0 = time.monotonic()
        drain_rss = []
        while time.monotonic() - t0 < args.drain_seconds and sink.count() < before:
            drain_rss.append(rss_mb(relay))
            with envoi.connect() as conn:
                conn.execute(due_again)
            time.sleep(1)
        drained, seconds = sink.count(), time.monotonic() - t0
        relay_cpu = cpu_seconds([relay]) - cpu0
        left = queued(envoi)
    finally:
        envoi.stop()
        for s in ("refusing", "sink"):
            if s in locals():
                locals()[s].stop()
    ok = [m for m in api_ms if m < 1e9]
    print(f"# backlog: {args.n} recipients queued ({args.per_message} per message, {NDOMAINS} domains) in {fill_s:.0f}s")
    print(f"refusing {args.refuse_seconds:.0f}s: relay_rss_max_mb={max(rss):.0f} rss_median_mb={statistics.median(rss):.0f} "
          f"tried={tried} api_posts={len(api_ms)} api_errors={len(api_ms) - len(ok)} "
          f"api_p50_ms={statistics.median(ok):.0f} api_max_ms={max(ok):.0f}")
    print(f"drain: delivered={drained} in {seconds:.0f}s rate_msg_per_s={drained / seconds:.0f} "
          f"relay_rss_max_mb={max(drain_rss or [0]):.0f} still_queued={left} "
          f"relay_cpu_ms_per_msg={relay_cpu * 1000 / max(drained, 1):.2f}")


if __name__ == "__main__":
    main()
