"""MTA-STS (RFC 8461) for the relay: which policy applies to a recipient domain now.

`policy_for(domain)` asks the TXT record `_mta-sts.<domain>` (through the MX resolver, so its answer
is cached by TTL: a domain without MTA-STS costs one cached lookup, not one per message) and compares
its id with the cached policy's:

- no record: the cached policy while unexpired (RFC 8461 5.1), else none;
- same id: the cached policy;
- new id, or nothing cached: fetch (one fetch per domain at a time, shared by every delivery waiting
  for it), store it for max_age; a failed fetch keeps the cached policy while unexpired and is
  reported (sts-policy-fetch-error, sts-policy-invalid, sts-webpki-invalid); without one, mail goes
  as if the domain had no policy, and the fetch is not tried again for FAILED_RETRY_SECONDS.

The cache is Postgres (`mta_sts_policies`, this region's) with a copy in memory; each domain is read
from Postgres at most once per relay process. Policies in mode `none` count as no policy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from envoi.infra.db import Database
from envoi.mta import idn
from envoi.mta.delivery import sts_store
from envoi.mta.delivery.mx import DnsPermanentError, DnsTemporaryError, MxResolver
from envoi.mta.delivery.sts_fetch import FetchError, PolicyFetcher
from envoi.mta.delivery.sts_policy import Mode, Policy, PolicyError, parse, record_id
from envoi.mta.delivery.tls_report import STS, TlsResults

log = logging.getLogger("envoi.relay")
FAILED_RETRY_SECONDS = 300.0


@dataclass(frozen=True)
class StsPolicy:
    """The policy in force for one recipient domain."""

    domain: str
    policy_id: str
    policy: Policy
    expires: float  # epoch seconds

    @property
    def enforced(self) -> bool:
        return self.policy.mode is Mode.ENFORCE


class MtaSts:
    def __init__(self, db: Database, resolver: MxResolver, fetcher: PolicyFetcher, results: TlsResults, *,
                 clock=time.time, max_cache: int = 100_000, metrics=None):
        self.db = db
        self.resolver = resolver
        self.fetcher = fetcher
        self.results = results
        self.clock = clock
        self.metrics = metrics
        self._max_cache = max_cache
        self._cached: OrderedDict[str, StsPolicy | None] = OrderedDict()  # None: Postgres has none
        self._failed: dict[str, tuple[str, float]] = {}  # domain -> (record id, retry after)
        self._inflight: dict[str, asyncio.Task] = {}

    async def policy_for(self, domain: str) -> StsPolicy | None:
        """The policy to apply to mail for `domain`, or None (deliver as without MTA-STS)."""
        try:  # A-labels: "_mta-sts" is no valid IDNA label, so the name is built from the converted domain
            domain = idn.ascii_domain(domain.rstrip(".")).lower()
        except idn.AddressError:
            return None
        try:
            texts = await self.resolver.txt(f"_mta-sts.{domain}")
        except (DnsTemporaryError, DnsPermanentError):
            texts = []  # cannot tell: the cached policy, if any, still holds
        record = record_id(texts)
        cached = await self._cached_policy(domain)
        if record is None or (cached is not None and cached.policy_id == record):
            return _in_force(cached)
        failed = self._failed.get(domain)
        if failed is not None and failed[0] == record and failed[1] > time.monotonic():
            return _in_force(cached)
        task = self._inflight.get(domain)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(self._refresh(domain, record, cached))
            self._inflight[domain] = task
            task.add_done_callback(lambda t: self._inflight.pop(domain, None) if self._inflight.get(domain) is t
                                   else None)
        return _in_force(await asyncio.shield(task))

    async def _cached_policy(self, domain: str) -> StsPolicy | None:
        if domain in self._cached:
            self._cached.move_to_end(domain)
            cached = self._cached[domain]
        else:
            cached = await asyncio.to_thread(self._load, domain)
            self._remember(domain, cached)
        if cached is not None and cached.expires <= self.clock():
            return None
        return cached

    def _load(self, domain: str) -> StsPolicy | None:
        with self.db.transaction() as conn:
            row = sts_store.load_policy(conn, domain)
        if row is None:
            return None
        try:
            policy = parse(row["policy_text"])
        except PolicyError:
            return None
        return StsPolicy(domain, row["policy_id"], policy, float(row["expires"]))

    def _remember(self, domain: str, value: StsPolicy | None) -> None:
        self._cached[domain] = value
        self._cached.move_to_end(domain)
        while len(self._cached) > self._max_cache:
            self._cached.popitem(last=False)

    async def _refresh(self, domain: str, record: str, cached: StsPolicy | None) -> StsPolicy | None:
        try:
            text = await self.fetcher.fetch(domain)
            policy = parse(text)
        except (FetchError, PolicyError) as ex:
            kind = ex.result_type if isinstance(ex, FetchError) else "sts-policy-invalid"
            self._fetched(kind)
            if len(self._failed) >= self._max_cache:
                self._failed.clear()
            self._failed[domain] = (record, time.monotonic() + FAILED_RETRY_SECONDS)
            self.results.record(domain, STS, kind, policy_id=record, mx=f"mta-sts.{domain}", detail=str(ex))
            log.info("MTA-STS policy of %s not fetched (%s): %s; %s", domain, kind, ex,
                     "keeping the cached one" if cached else "delivering as without a policy")
            return cached
        self._fetched("fetched")
        self._failed.pop(domain, None)
        fresh = StsPolicy(domain, record, policy, self.clock() + policy.max_age)
        try:
            await asyncio.to_thread(self._save, fresh)
        except Exception:  # the policy is good: use it now, store it next time
            log.exception("storing the MTA-STS policy of %s failed", domain)
        self._remember(domain, fresh)
        return fresh

    def _save(self, value: StsPolicy) -> None:
        policy = value.policy
        with self.db.transaction() as conn:
            sts_store.save_policy(conn, value.domain, value.policy_id, policy.mode.value, list(policy.mx),
                                  policy.max_age, policy.text)

    def _fetched(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.mta_sts_fetches.labels(result).inc()


def _in_force(value: StsPolicy | None) -> StsPolicy | None:
    return value if value is not None and value.policy.mode is not Mode.NONE else None
