"""Can a domain receive mail? The relay's MX logic (implicit MX, null MX) asked synchronously, for callers
outside an event loop (address validation in the API and in RQ workers).

One private event loop on a daemon thread owns the MxResolver (it is used from one loop only), so its TTL
cache is shared by every caller in the process. A question (or a set of them, asked concurrently) waits
about `timeout` seconds, whatever the DNS server does: an answer that does not come in time is UNKNOWN,
never a hang.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterable
from enum import Enum

from envoi.mta.delivery.mx import DnsPermanentError, DnsTemporaryError, MxResolver

#: How long an answer is reused without asking the resolver again (its own cache follows the records'
#: TTLs; this one only saves the hop to its thread), and how many are kept.
ANSWER_SECONDS = 60.0
MAX_ANSWERS = 100_000


class MailDomain(Enum):
    MX = "mx"  # MX records name mail hosts
    IMPLICIT = "implicit"  # no MX, but A/AAAA records: the domain is its own mail host (RFC 5321 5.1)
    NULL_MX = "null_mx"  # "MX 0 ." (RFC 7505): the domain says it accepts no mail
    NONE = "none"  # no such domain, or neither MX nor address records
    UNKNOWN = "unknown"  # no answer in time, or the DNS server failed


class MailDomains:
    def __init__(self, nameserver: tuple[str, int] | None = None, timeout: float = 5.0):
        self.timeout = timeout
        # The resolver gives up a little before the caller does, so a timeout is its own clean answer.
        self._resolver = MxResolver(nameserver, timeout=max(0.1, timeout * 0.9))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        # domain -> (monotonic expiry, answer): a repeated domain is answered without the hop to the
        # loop's thread (which costs more than the rest of a validation). UNKNOWN is never kept.
        self._answers: dict[str, tuple[float, MailDomain]] = {}

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        # Started on first use: every process builds this, few ever validate.
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="mail-domains-dns", daemon=True).start()
            return self._loop

    def check(self, domain: str) -> MailDomain:
        return self.check_many([domain])[domain]

    def check_many(self, domains: Iterable[str]) -> dict[str, MailDomain]:
        """check() for many domains at once (concurrent queries): the whole set waits about `timeout`;
        a domain still unanswered then is UNKNOWN, the others keep their answers."""
        now = time.monotonic()
        known: dict[str, MailDomain] = {}
        wanted: list[str] = []
        for domain in dict.fromkeys(domains):
            entry = self._answers.get(domain)
            if entry is not None and entry[0] > now:
                known[domain] = entry[1]
            else:
                wanted.append(domain)
        if not wanted:
            return known
        future = asyncio.run_coroutine_threadsafe(self._check_all(wanted), self._running_loop())
        try:
            answers = future.result(self.timeout + 1.0)  # the loop's own deadline comes first
        except concurrent.futures.TimeoutError:
            future.cancel()
            answers = dict.fromkeys(wanted, MailDomain.UNKNOWN)
        if len(self._answers) > MAX_ANSWERS:
            self._answers.clear()
        expires = time.monotonic() + ANSWER_SECONDS
        self._answers.update((d, (expires, a)) for d, a in answers.items() if a is not MailDomain.UNKNOWN)
        return {**known, **answers}

    async def _check_all(self, domains: list[str]) -> dict[str, MailDomain]:
        tasks = {domain: asyncio.ensure_future(self._check(domain)) for domain in domains}
        done, pending = await asyncio.wait(tasks.values(), timeout=self.timeout)
        for task in pending:
            task.cancel()
        return {domain: task.result() if task in done else MailDomain.UNKNOWN for domain, task in tasks.items()}

    async def _check(self, domain: str) -> MailDomain:
        try:
            hosts = await self._resolver.mx(domain)
        except DnsPermanentError as ex:
            return MailDomain.NULL_MX if ex.enhanced_code == "5.1.10" else MailDomain.NONE
        except DnsTemporaryError:
            return MailDomain.UNKNOWN
        except Exception:  # an answer dnspython cannot use: as good as none, for this question
            return MailDomain.UNKNOWN
        implicit = len(hosts) == 1 and hosts[0].preference == 0 and hosts[0].host == domain.lower().rstrip(".")
        return MailDomain.IMPLICIT if implicit else MailDomain.MX

    def close(self) -> None:
        with self._lock:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._loop = None
