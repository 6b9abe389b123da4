"""The relay's outcome write, its Python only: Recorder.write of 32 delivered outcomes of benchmark-shaped
messages (plan, the events' rows, the stats rollup, the webhook writer, each event's JSON), with the
Postgres statements stubbed out (they are measured by bench/relay_drain.py). Best of 40 writes per
round; prints the best and median round in µs per outcome.

    PYTHONPATH=<checkout> .venv/bin/python bench/recorder_write_cpu.py [rounds] [label]

A/B: run it with PYTHONPATH set to each checkout in turn (alternating, several pairs).
"""

import contextlib
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import envoi.events.store as events_store
import envoi.mta.store as mta_store
import envoi.webhooks.store as webhooks_store
from envoi.events.service import Events
from envoi.events.stats import Stats
from envoi.mta.delivery.destinations import Delivery
from envoi.mta.delivery.outcome import Kind, Outcome
from envoi.mta.delivery.record import Recorder
from envoi.mta.delivery.session import Egress
from envoi.webhooks.service import Webhooks

BATCH = 32


class _Cursor:
    rowcount = 0


def _stub(conn, *args, **kwargs):
    return _Cursor()


for module, names in ((events_store, ("insert_columns", "add_stats", "add_tags", "message_methods")),
                      (mta_store, ("save_dkim_signatures", "finish", "reschedule")),
                      (webhooks_store, ("enqueue_for_events",))):
    for name in names:
        setattr(module, name, _stub)


class _Db:
    @contextlib.contextmanager
    def pipelined(self):
        yield None


def message(pk: int, now: float) -> dict:
    return {"id": pk, "account_id": 1, "domain_id": 2, "mail_from": "bench@bench.example.com", "method": "http",
            "headers": {"to": f"rcpt{pk}@d{pk % 1000:03d}.example.net",
                        "message-id": f"<20261207175301.{pk}.abcdef@bench.example.com>",
                        "from": "Bench <bench@bench.example.com>", "subject": f"Bench message {pk}"},
            "tags": ["bench-run-1"], "user_variables": {}, "options": {}, "attachments": [], "size": 5200,
            "created_ts": now - 2.5, "recipient_count": 1}


def batch() -> list:
    now, out = time.time(), []
    for pk in range(1000, 1000 + BATCH):
        rcpt = {"id": pk * 3, "message_pk": pk, "address": f"rcpt{pk}@d{pk % 1000:03d}.example.net", "attempts": 0,
                "expires_at": datetime.now(UTC) + timedelta(days=3)}
        delivery = Delivery(message(pk, now), {"name": "bench.example.com"}, [rcpt], Egress(None, "relay.test"))
        out.append((delivery, rcpt, Outcome(Kind.DELIVERED, 250, "2.0.0 Ok: queued as ABC123", mx_host="127.0.0.1",
                                            tls=False, sending_ip="", session_seconds=0.0012)))
    return out


def recorder() -> Recorder:
    webhooks = Webhooks.__new__(Webhooks)  # only its events writer runs: no database, no dispatcher
    webhooks._lock, webhooks._outboxes = threading.Lock(), {}
    events = Events.__new__(Events)
    events.writers, events.listeners = [Stats(None).rollup, webhooks.events_writer], []
    return Recorder(_Db(), events, (60.0,), signatures={}, settled=lambda *a: None)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    label = sys.argv[2] if len(sys.argv) > 2 else ""
    rec = recorder()

    def one() -> float:
        results = batch()
        started = time.perf_counter()
        for event in rec.write(results, {}, []):
            event.json  # noqa: B018 -- the live stream reads it (cached)
        return time.perf_counter() - started

    figures = sorted(min(one() for _ in range(40)) / BATCH * 1e6 for _ in range(rounds))
    print(f"{label} Recorder.write Python per outcome: best {figures[0]:.2f} us, median {figures[len(figures) // 2]:.2f} us")


if __name__ == "__main__":
    main()
