"""Address validation as Mailgun's Validations v4 answers it (docs/validation.md).

validate() checks one address: syntax (intake's own parser, email-validator inside), the domain's mail
hosts in DNS (MX, else A/AAAA; a null MX accepts nothing) through the region's resolver with a deadline,
the disposable-domain list, role mailboxes, and a did_you_mean for a mistyped popular domain. No SMTP
probe of the mailbox: asking a third party's server about mailboxes we will not mail is what
spammers' list cleaners do, gets the asking IP blocklisted (our sending IPs share its reputation),
and says nothing reliable (catch-alls, greylisting). So `deliverable` means "the address is well formed
and its domain accepts mail".

validate_many() is the same for an iterable of addresses (mailing lists' validation uses it).

Bulk jobs: a CSV upload becomes one row per address; RQ workers (envoi.validation.jobs, run by
`envoi worker`) validate them in batches of ENVOI_VALIDATION_BATCH, committing progress after each.
Jobs and results are personal data: scoped by account, deleted ENVOI_VALIDATION_RESULTS_TTL after
creation (purge_expired, run by the scheduler), part of an address's export and erasure.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import gzip
import hashlib
import hmac
import io
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

from envoi.infra.db import Database
from envoi.infra.errors import EnvoiError
from envoi.mta.compose import normalize_address
from envoi.mta.mail_domains import MailDomain, MailDomains
from envoi.validation import checks, store
from envoi.validation.errors import (
    AddressMissing,
    AddressTooLong,
    DownloadNotFound,
    FileInvalid,
    JobExists,
    JobNotFound,
    ListIdInvalid,
    TooManyJobs,
    TooManyValidations,
)

log = logging.getLogger("envoi.validation")
MAX_ADDRESS = 512  # Mailgun's maximum for `address`
MAX_FILE_BYTES = 25 * 1024 * 1024  # Mailgun's maximum bulk upload (CSV or gzip)
MAX_PARALLEL_JOBS = 5  # Mailgun's documented cap on an account's jobs in progress
EMAIL_COLUMNS = ("email", "email_address")  # Mailgun accepts either header
RESULTS = ("catch_all", "deliverable", "do_not_send", "undeliverable", "unknown")
RISKS = ("high", "low", "medium", "unknown")
STALLED_SECONDS = 600  # a running job without progress this long lost its RQ job: enqueued again
CSV_FIELDS = ("address", "result", "risk", "is_disposable_address", "is_role_address", "reason", "did_you_mean")


class Validation:
    def __init__(self, db: Database, domains: MailDomains, *, download_key: bytes, public_url: str,
                 results_ttl: float = 30 * 86400.0, batch: int = 200, concurrency: int = 10,
                 enqueue: Callable[[int], None] | None = None, clock: Callable[[], float] = time.time):
        self.db = db
        self.domains = domains
        self.results_ttl = results_ttl
        self.batch = batch
        self.concurrency = concurrency
        self.enqueue = enqueue  # hands a job's next batch to a worker (envoi.validation.jobs)
        self.clock = clock
        self._download_key = hmac.new(download_key, b"envoi validation downloads", hashlib.sha256).digest()
        self._public_url = public_url.rstrip("/")
        self._running: dict[int, int] = {}
        self._lock = threading.Lock()

    # -- single addresses ------------------------------------------------------------------------

    @staticmethod
    def requested(address: str | None) -> str:
        """The `address` parameter as given, refused when missing or over Mailgun's 512 characters."""
        if address is None or not address.strip():
            raise AddressMissing()
        if len(address) > MAX_ADDRESS:
            raise AddressTooLong()
        return address.strip()

    @contextlib.contextmanager
    def slot(self, account_id: int) -> Iterator[None]:
        """At most `concurrency` single validations of one account at once in this process: 429 above."""
        with self._lock:
            if self._running.get(account_id, 0) >= self.concurrency:
                raise TooManyValidations()
            self._running[account_id] = self._running.get(account_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._running[account_id] -= 1
                if not self._running[account_id]:
                    del self._running[account_id]

    def validate(self, address: str) -> dict:
        """Mailgun's validation response for one address (never raises for the address's content)."""
        return self.validate_many([address])[0]

    def validate_many(self, addresses: Iterable[str]) -> list[dict]:
        """validate() for each address, in order. The domains still needing DNS are asked concurrently
        (and cached by TTL), so a batch waits at most one DNS deadline, however many domains it has."""
        parsed = [_parse(address) for address in addresses]
        mail = self.domains.check_many(p.domain for p in parsed if p.needs_dns)
        return [p.answer(mail.get(p.domain)) for p in parsed]

    # -- bulk jobs -----------------------------------------------------------------------------

    def create_job(self, account_id: int, list_id: str, data: bytes) -> dict:
        _check_list_id(list_id)
        return self._create(account_id, list_id, parse_upload(data))

    def create_list_job(self, account_id: int, list_address: str, members: list[str]) -> dict:
        """A mailing list's validation (`POST /v3/lists/{address}/validate`): a bulk job over its members,
        named by the list's address (an uploaded job's id never holds '@', so the two cannot collide)."""
        return self._create(account_id, list_address, members)

    def _create(self, account_id: int, list_id: str, addresses: list[str]) -> dict:
        expires = datetime.fromtimestamp(self.clock() + self.results_ttl, UTC)
        with self.db.transaction() as conn:
            if store.running_count(conn, account_id) >= MAX_PARALLEL_JOBS:
                raise TooManyJobs()
            job = store.insert_job(conn, account_id, list_id, addresses, expires)
            if job is None:
                raise JobExists()
        self._enqueue(job["id"])
        return {"id": list_id, "message": "The validation job was submitted."}

    def job(self, account_id: int, list_id: str) -> dict:
        with self.db.transaction() as conn:
            row = store.job(conn, account_id, list_id)
            if row is None:
                raise JobNotFound()
            return self._view(row, store.summary(conn, row["id"]))

    def jobs(self, account_id: int, limit: int = 100, pivot: str | None = None, page: str | None = None) -> dict:
        """The account's jobs, newest first, with Mailgun's paging URLs (`limit`, `page`, `pivot`)."""
        limit = max(1, min(limit, 500))
        after = before = None
        if page == "last":
            before = 0  # the oldest jobs, shown newest first like every page
        elif pivot is not None and pivot.isdigit():
            after, before = (int(pivot), None) if page != "prev" else (None, int(pivot))
        with self.db.transaction() as conn:
            rows = store.jobs_page(conn, account_id, limit, after, before)
            total = store.count_jobs(conn, account_id)
            views = [self._view(row, store.summary(conn, row["id"])) for row in rows]
        base = f"{self._public_url}/v4/address/validate/bulk?limit={limit}"
        first, last = (rows[0]["id"], rows[-1]["id"]) if rows else (None, None)
        return {
            "jobs": views, "total": total,
            "paging": {"first": base, "last": f"{base}&page=last",
                       "next": f"{base}&page=next&pivot={last}" if last is not None else base,
                       "prev": f"{base}&page=prev&pivot={first}" if first is not None else base},
        }

    def delete_job(self, account_id: int, list_id: str) -> dict:
        """Cancel a job in progress or delete a finished one's results: either way nothing of it is kept."""
        with self.db.transaction() as conn:
            if not store.delete_job(conn, account_id, list_id):
                raise JobNotFound()
        return {"message": "Validation job canceled."}

    def run_batch(self, job_id: int) -> bool:
        """Validate the job's next batch and commit it; True when addresses remain (the caller enqueues
        the next batch). A deleted job, or one with nothing left, is finished."""
        with self.db.transaction() as conn:
            row = store.job_by_id(conn, job_id)
            if row is None:
                return False
            items = store.pending(conn, job_id, self.batch)
            store.touch(conn, job_id)
        answers = self.validate_many(item["address"] for item in items)
        results = [(item["position"], answer) for item, answer in zip(items, answers, strict=True)]
        with self.db.transaction() as conn:
            store.save_results(conn, job_id, results)
            if len(items) < self.batch:
                store.finish(conn, job_id)
                return False
        return True

    def results(self, token: str) -> tuple[str, Iterator[dict]]:
        """(format, rows) of the job a download link names; DownloadNotFound when unknown or expired."""
        job_id, fmt = self._open_token(token)
        with self.db.transaction() as conn:
            row = store.job_by_id(conn, job_id)
        if row is None or row["status"] != "uploaded":
            raise DownloadNotFound()

        def rows() -> Iterator[dict]:
            after = -1
            while True:
                with self.db.transaction() as conn:
                    chunk = store.results(conn, job_id, after, 1000)
                if not chunk:
                    return
                for item in chunk:
                    yield item["result"] or _answer(item["address"], "unknown", "unknown", ["no_data"],
                                                    disposable=False, role=False)
                after = chunk[-1]["position"]
        return fmt, rows()

    def purge_expired(self) -> int:
        """Delete jobs (and their results) past their expiry; returns how many."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        deleted = 0
        while True:
            with self.db.transaction() as conn:
                n = store.delete_expired(conn, now, 100)
            deleted += n
            if n < 100:
                return deleted

    def requeue_stalled(self) -> int:
        """Enqueue again running jobs whose RQ job was lost (Redis flushed, worker killed)."""
        older = datetime.fromtimestamp(time.time() - STALLED_SECONDS, UTC)
        with self.db.transaction() as conn:
            ids = store.stalled(conn, older)
            for job_id in ids:
                store.touch(conn, job_id)
        for job_id in ids:
            self._enqueue(job_id)
        return len(ids)

    def _enqueue(self, job_id: int) -> None:
        if self.enqueue is None:
            return
        try:
            self.enqueue(job_id)
        except Exception as ex:  # Redis down: the job is in Postgres, requeue_stalled enqueues it later
            log.warning("enqueueing bulk validation job %d failed: %s", job_id, ex)

    # -- personal data: one address's export and erasure (envoi.privacy) ---------------------------

    @staticmethod
    def export_address(conn, account_id: int, address: str) -> list[dict]:
        return [{"list_id": r["list_id"], "created_at": r["created_at"].isoformat(), "address": r["address"],
                 "result": r["result"]} for r in store.items_for(conn, account_id, address)]

    @staticmethod
    def erase_address(conn, account_id: int, address: str) -> int:
        return store.erase_address(conn, account_id, address)

    # -- views ---------------------------------------------------------------------------------

    def _view(self, row: dict, counts: dict[tuple[str, str], int]) -> dict:
        results = dict.fromkeys(RESULTS, 0)
        risks = dict.fromkeys(RISKS, 0)
        for (result, risk), n in counts.items():
            results[result] = results.get(result, 0) + n
            risks[risk] = risks.get(risk, 0) + n
        view = {
            "id": row["list_id"], "created_at": int(row["created_at"].timestamp()), "status": row["status"],
            "quantity": row["quantity"], "records_processed": row["records_processed"],
            "summary": {"result": results, "risk": risks},
        }
        if row["status"] == "uploaded":
            view["download_url"] = {fmt: self._download_url(row["id"], fmt, row["expires_at"]) for fmt in ("csv", "json")}
        return view

    def _download_url(self, job_id: int, fmt: str, expires_at: datetime) -> str:
        payload = f"{job_id}.{fmt}.{int(expires_at.timestamp())}"
        signature = hmac.new(self._download_key, payload.encode(), hashlib.sha256).digest()[:18]
        token = f"{payload}.{base64.urlsafe_b64encode(signature).decode()}"
        return f"{self._public_url}/v4/address/validate/download/{token}"

    def _open_token(self, token: str) -> tuple[int, str]:
        try:
            job_id, fmt, expires, signature = token.split(".")
            expected = hmac.new(self._download_key, f"{job_id}.{fmt}.{expires}".encode(), hashlib.sha256).digest()[:18]
            if not hmac.compare_digest(base64.urlsafe_b64decode(signature), expected):
                raise ValueError("bad signature")
            if int(expires) < self.clock() or fmt not in ("csv", "json"):
                raise ValueError("expired")
            return int(job_id), fmt
        except (ValueError, TypeError) as ex:
            raise DownloadNotFound() from ex


class _Parsed:
    """What an address says without the network; answer() adds what DNS said about its domain."""

    def __init__(self, address: str, local: str = "", domain: str = "", valid: bool = True):
        self.address, self.local, self.domain, self.valid = address, local, domain, valid
        self.role = valid and checks.is_role(local)
        self.disposable = valid and checks.is_disposable(domain)
        self.suggestion = checks.suggest_domain(domain) if valid else None

    @property
    def needs_dns(self) -> bool:
        return self.valid and not self.disposable  # throwaway inboxes: no lookup needed to say so

    def answer(self, mail: MailDomain | None) -> dict:
        if not self.valid:
            return _answer(self.address, "undeliverable", "high", ["failed_syntax_check"], disposable=False,
                           role=False)
        reasons = ["mailbox_is_role_address"] if self.role else []
        if self.disposable:
            reasons.append("mailbox_is_disposable_address")
            result, risk = "do_not_send", "high"
        elif mail in (MailDomain.NONE, MailDomain.NULL_MX):
            reasons.append("no_mx")
            result, risk = "undeliverable", "high"
        elif mail in (MailDomain.MX, MailDomain.IMPLICIT):
            result, risk = "deliverable", ("medium" if self.role else "low")
        else:  # no answer in time, or a DNS failure
            reasons.append("no_data")
            result, risk = "unknown", "unknown"
        return _answer(self.address, result, risk, reasons, disposable=self.disposable, role=self.role,
                       did_you_mean=f"{self.local}@{self.suggestion}" if self.suggestion else None)


def _parse(address: str) -> _Parsed:
    try:
        normalized = normalize_address(address, "address")
    except EnvoiError:
        return _Parsed(address, valid=False)
    local, _, domain = normalized.rpartition("@")
    return _Parsed(address, local, domain)


def _answer(address: str, result: str, risk: str, reasons: list[str], *, disposable: bool, role: bool,
            did_you_mean: str | None = None) -> dict:
    answer = {"address": address, "is_disposable_address": disposable, "is_role_address": role,
              "reason": reasons, "result": result, "risk": risk}
    if did_you_mean:
        answer["did_you_mean"] = did_you_mean
    return answer


def _check_list_id(list_id: str) -> None:
    if not list_id or len(list_id) > 255 or "@" in list_id or "/" in list_id or not list_id.isprintable():
        raise ListIdInvalid()


def parse_upload(data: bytes) -> list[str]:
    """The addresses of an uploaded CSV (or gzipped CSV) with an `email` or `email_address` column."""
    if not data:
        raise FileInvalid("file parameter is missing: upload the CSV as multipart field 'file'")
    if len(data) > MAX_FILE_BYTES:
        raise FileInvalid("file is too large: at most 25 MB")
    if data[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as unzipped:
                data = unzipped.read(MAX_FILE_BYTES + 1)
        except (OSError, EOFError) as ex:
            raise FileInvalid("file is not a valid gzip file") from ex
        if len(data) > MAX_FILE_BYTES:
            raise FileInvalid("file is too large: at most 25 MB once unzipped")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as ex:
        raise FileInvalid("file must be UTF-8 or ASCII CSV") from ex
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = [h.strip().lower() for h in next(reader, [])]
        column = next((header.index(name) for name in EMAIL_COLUMNS if name in header), None)
        if column is None:
            raise FileInvalid("file must have a header row with an 'email' or 'email_address' column")
        addresses = [row[column].strip() for row in reader if len(row) > column and row[column].strip()]
    except csv.Error as ex:
        raise FileInvalid(f"file is not valid CSV: {ex}") from ex
    if not addresses:
        raise FileInvalid("file has no addresses")
    return [a[:MAX_ADDRESS] for a in addresses]


def csv_lines(rows: Iterable[dict]) -> Iterator[bytes]:
    """The results as CSV, header first (reasons joined by '|')."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    for row in rows:
        writer.writerow([row.get("address"), row.get("result"), row.get("risk"), row.get("is_disposable_address"),
                         row.get("is_role_address"), "|".join(row.get("reason") or ()), row.get("did_you_mean") or ""])
        if out.tell() > 65536:
            yield out.getvalue().encode()
            out.seek(0)
            out.truncate()
    yield out.getvalue().encode()
