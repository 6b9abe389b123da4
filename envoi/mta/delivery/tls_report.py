"""TLS reporting (RFC 8460): the relay counts the outcome of every outbound TLS negotiation per recipient
domain and UTC day; `report` renders one domain's day in RFC 8460's JSON format.

The relay counts in memory (`TlsResults.record`, on its event loop, no I/O) and `flush` adds the counts
to Postgres in one statement every few seconds and when it stops, so a session costs a dict update.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from datetime import UTC, date, datetime

from envoi.infra.db import Database
from envoi.mta.delivery import sts_store

log = logging.getLogger("envoi.relay")

SUCCESS = "success"
STS = "sts"
NO_POLICY = "no-policy-found"

#: RFC 8460 4.3 result types, from OpenSSL's verification codes (X509_V_ERR_*).
_VERIFY_CODES = {
    62: "certificate-host-mismatch",  # HOSTNAME_MISMATCH
    10: "certificate-expired",  # CERT_HAS_EXPIRED
    18: "certificate-not-trusted",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "certificate-not-trusted",  # SELF_SIGNED_CERT_IN_CHAIN
    20: "certificate-not-trusted",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "certificate-not-trusted",  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
}


def verify_result_type(verify_code: int | None) -> str:
    return _VERIFY_CODES.get(verify_code or 0, "validation-failure")


class TlsResults:
    def __init__(self, db: Database, metrics=None, clock=time.time):
        self.db = db
        self.metrics = metrics
        self.clock = clock
        self._counts: Counter = Counter()
        self._details: dict[tuple, str] = {}
        self._lock = threading.Lock()  # record() on the loop, flush() in a thread

    def record(self, domain: str, policy_type: str, result_type: str, *, policy_id: str = "", mx: str = "",
               ip: str = "", sending_ip: str = "", detail: str = "") -> None:
        day = datetime.fromtimestamp(self.clock(), UTC).date()
        key = (day, domain.lower(), policy_type, policy_id, result_type, mx, ip, sending_ip)
        with self._lock:
            self._counts[key] += 1
            if detail:
                self._details[key] = detail[:500]
        if self.metrics is not None:
            self.metrics.tls_sessions.labels(policy_type, result_type).inc()

    def flush(self) -> None:
        """Add the counts so far to Postgres (blocking: call in a thread). Kept for the next flush if
        the write fails."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
            details, self._details = self._details, {}
        if not counts:
            return
        rows = [(*key, details.get(key, ""), n) for key, n in sorted(counts.items())]
        try:
            with self.db.transaction() as conn:
                sts_store.add_results(conn, rows)
        except Exception:
            with self._lock:
                self._counts.update(counts)
                self._details = {**details, **self._details}
            raise


def report(db: Database, domain: str, day: date, *, organization: str, contact: str = "",
           report_id: str | None = None) -> dict:
    """One recipient domain's UTC day as an RFC 8460 report (section 4.4)."""
    with db.transaction() as conn:
        rows = sts_store.results(conn, domain.lower(), day)
    policies: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row["policy_type"], row["policy_id"])
        entry = policies.get(key)
        if entry is None:
            policy = {"policy-type": row["policy_type"], "policy-domain": row["policy_domain"]}
            if row["policy_type"] == STS and row["policy_text"]:
                policy["policy-string"] = [ln.strip() for ln in row["policy_text"].splitlines() if ln.strip()]
                policy["mx-host"] = list(row["mx"] or [])
            entry = policies[key] = {"policy": policy, "summary": {"total-successful-session-count": 0,
                                                                   "total-failure-session-count": 0},
                                     "failure-details": []}
        if row["result_type"] == SUCCESS:
            entry["summary"]["total-successful-session-count"] += row["sessions"]
            continue
        entry["summary"]["total-failure-session-count"] += row["sessions"]
        detail = {"result-type": row["result_type"], "failed-session-count": row["sessions"]}
        for field, column in (("sending-mta-ip", "sending_ip"), ("receiving-mx-hostname", "receiving_mx"),
                              ("receiving-ip", "receiving_ip"), ("additional-information", "detail")):
            if row[column]:
                detail[field] = row[column]
        entry["failure-details"].append(detail)
    for entry in policies.values():
        if not entry["failure-details"]:
            del entry["failure-details"]
    out = {
        "organization-name": organization,
        "date-range": {"start-datetime": f"{day.isoformat()}T00:00:00Z",
                       "end-datetime": f"{day.isoformat()}T23:59:59Z"},
        "contact-info": contact,
        "report-id": report_id or f"{day.isoformat()}_{domain.lower()}",
        "policies": list(policies.values()),
    }
    if not contact:
        del out["contact-info"]
    return out


def domains(db: Database, day: date) -> list[str]:
    """Recipient domains with results on `day`."""
    with db.transaction() as conn:
        return sts_store.domains(conn, day)
