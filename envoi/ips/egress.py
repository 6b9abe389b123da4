"""Egress selection at delivery time, from an in-memory view of the inventory.

The relay calls `EgressView.choose(message_row, domain_row)` in its event loop, once per delivery,
so choose() never touches the network: it reads an immutable snapshot of the inventory that a
background thread reloads every ENVOI_IPS_REFRESH seconds, and spends warm-up quota that the same
thread reserved in Postgres beforehand.

Order: o:sending-ip / o:sending-ip-pool (only when the account owns it) -> the domain's dedicated IPs
or its linked pool -> the shared pool (enabled, non-dedicated IPs). Within a set, IPs take turns
(round robin) and an IP whose warm-up quota is spent is skipped. When a whole set is spent the
policy decides (the domain's ip_overflow, else the relay's; "wait" for an explicit o:sending-ip(-pool)
whose domain set none): "overflow" moves on to the shared pool, "wait" raises NoEgressAvailable.

Warm-up caps ("never exceeds"): quota is reserved from ip_warmup_usage in blocks by an UPDATE that
never lets `reserved` pass the day's cap (a CHECK constraint backs it). A relay only sends what it
holds, so the cap holds across restarts and across several relays on one host; a relay that dies
loses its unspent block for that day (it under-sends, never over-sends).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from envoi.infra.db import Database, connect
from envoi.ips import store, warmup

log = logging.getLogger("envoi.ips")


class NoEgressAvailable(Exception):  # noqa: N818 (named by the relay contract)
    """No egress IP may send this delivery now (warm-up caps, "wait" policy, or IPs on another host).

    The relay should put the delivery back (reschedule the recipients `retry_after` seconds later,
    without counting an attempt or recording a failure event) instead of sending it. A signal of
    the egress view to the relay, never seen by a caller: not an EnvoiError, so not in errors.py.
    """

    def __init__(self, retry_after: float, reason: str = "no egress IP available"):
        super().__init__(f"{reason}; retry in {retry_after:.0f}s")
        self.retry_after = retry_after
        self.reason = reason


@dataclass(frozen=True)
class Choice:
    """The source address to bind (None = the OS default) and the EHLO name to announce."""

    address: str | None
    helo: str
    via: str = "default"  # sending-ip | sending-ip-pool | domain-ip | domain-pool | shared | overflow | default
    recipients: int = 1  # how many of the recipients asked for this address may carry (warm-up quota)


@dataclass
class Inventory:
    ips: dict[str, dict] = field(default_factory=dict)
    local: frozenset[str] = frozenset()  # enabled addresses on this relay's host
    shared: list[str] = field(default_factory=list)  # local, enabled, not dedicated
    domain_ips: dict[int, list[str]] = field(default_factory=dict)
    domain_pool: dict[int, str] = field(default_factory=dict)
    pools: dict[str, tuple[int | None, list[str]]] = field(default_factory=dict)
    warm: dict[str, tuple[float, list[list[int]]]] = field(default_factory=dict)  # address -> (start, plan)
    clock_skew: float = 0.0  # database now() - local time.time()
    # Domains whose own IPs (or linked pool) are enabled only on other relay hosts: pinned elsewhere.
    elsewhere: frozenset[int] = frozenset()
    # Those of them whose mail other hosts may take when it waits too long (the domain's ip_overflow,
    # else the relay's policy); the rest wait for their host.
    overflow: frozenset[int] = frozenset()
    policies: dict[int, str] = field(default_factory=dict)  # domains' own ip_overflow (else the relay's)
    # "<account id>/ip:<address>" and "<account id>/pool:<id>" of owned dedicated IPs and pools (what an
    # o:sending-ip / o:sending-ip-pool may name) whose enabled IPs are all on other relay hosts.
    pins_elsewhere: frozenset[str] = frozenset()

    @classmethod
    def build(cls, data: dict, host: str, policy: str = "overflow") -> Inventory:
        ips = {r["address"]: r for r in data["ips"]}
        local = frozenset(a for a, r in ips.items() if r["enabled"] and r["host"] == host)
        domain_ips: dict[int, list[str]] = defaultdict(list)
        for r in data["domain_ips"]:
            domain_ips[r["domain_id"]].append(r["address"])
        members: dict[str, list[str]] = defaultdict(list)
        for r in data["members"]:
            members[r["pool_id"]].append(r["address"])
        pool_of = {r["domain_id"]: r["pool_id"] for r in data["domain_pools"]}
        elsewhere = set()
        for domain_id in set(domain_ips) | set(pool_of):
            enabled = [a for a in domain_ips.get(domain_id) or members.get(pool_of.get(domain_id), [])
                       if a in ips and ips[a]["enabled"]]
            if enabled and not any(ips[a]["host"] == host for a in enabled):
                elsewhere.add(domain_id)
        own = {r["domain_id"]: r["ip_overflow"] for r in data.get("overflow", [])}
        overflow = {d for d in elsewhere if own.get(d, policy) == "overflow"}
        pins = {f"{r['account_id']}/ip:{a}" for a, r in ips.items()
                if r["dedicated"] and r["account_id"] is not None and r["enabled"] and r["host"] != host}
        for r in data["pools"]:
            enabled = [a for a in members.get(r["id"], []) if a in ips and ips[a]["enabled"]]
            if r["account_id"] is not None and enabled and not any(ips[a]["host"] == host for a in enabled):
                pins.add(f"{r['account_id']}/pool:{r['id']}")
        return cls(
            ips=ips,
            local=local,
            shared=sorted(a for a in local if not ips[a]["dedicated"]),
            domain_ips=dict(domain_ips),
            domain_pool=pool_of,
            pools={r["id"]: (r["account_id"], members.get(r["id"], [])) for r in data["pools"]},
            warm={r["address"]: (r["started_at"].timestamp(), r["plan"]) for r in data["warmups"]},
            clock_skew=data["now"].timestamp() - time.time(),
            elsewhere=frozenset(elsewhere),
            overflow=frozenset(overflow),
            policies=own,
            pins_elsewhere=frozenset(pins),
        )


def block_size(cap: int) -> int:
    """Quota reserved at a time: small caps whole, large ones in tenths."""
    return max(cap // 10, min(cap, 25))


class EgressView:
    def __init__(self, db: Database, *, host: str, policy: str = "overflow", refresh: float = 5.0,
                 default_helo: str = "localhost"):
        if policy not in ("overflow", "wait"):
            raise ValueError("warm-up policy must be overflow or wait")
        self.db = db
        self.host = host
        self.policy = policy
        self.refresh = refresh
        self.default_helo = default_helo
        self.inventory = Inventory()
        self._lock = threading.Lock()
        self._quota: dict[tuple[str, int], int] = {}  # reserved in Postgres, not yet spent
        self._spent: dict[tuple[str, int], int] = defaultdict(int)  # spent, not yet recorded as used
        self._exhausted: set[tuple[str, int]] = set()  # the day's cap is fully reserved
        self._turn: dict[object, int] = defaultdict(int)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()
        self._started: dict[str, float] = {}  # warm-up start per address, to notice restarts

    # lifecycle ----------------------------------------------------------------------------------
    def start(self) -> EgressView:
        """Load the inventory now (blocking, before the relay runs), then refresh in the background."""
        self.sync()
        self._thread = threading.Thread(target=self._loop, name="envoi-ips-egress", daemon=True)
        self._thread.start()
        return self

    def stop(self, release: bool = True) -> None:
        """Stop refreshing; record what was spent and hand unspent reserved quota back."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self._flush(release=release, direct=True)
        except Exception:
            log.exception("ips: could not record warm-up usage at stop")

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.refresh)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.sync()
            except Exception:
                log.exception("ips: refreshing the egress inventory failed; keeping the last one")

    # the hot path (event loop; memory only) -----------------------------------------------------
    def choose(self, message: dict, domain: dict, recipients: int = 1) -> Choice:
        """The address for (the first Choice.recipients of) `recipients` recipients of this message at
        one destination: warm-up quota counts recipients, so an IP near its cap may carry only some."""
        inv = self.inventory
        if not inv.local:
            return Choice(None, self.default_helo, recipients=recipients)  # no inventory here: OS default
        options = message.get("options") or {}
        if options.get("testmode"):
            return Choice(None, self.default_helo, recipients=recipients)  # never sent: spends no quota
        account_id = message["account_id"]
        chosen: list[str] | None = None
        key: object = None
        via = "shared"
        if ip := options.get("sending_ip"):
            row = inv.ips.get(ip)
            if row and row["dedicated"] and row["account_id"] == account_id:
                chosen, key, via = [ip], ("ip", ip), "sending-ip"
        elif pool_id := options.get("sending_ip_pool"):
            pool = inv.pools.get(pool_id)
            if pool and pool[0] == account_id:
                chosen, key, via = pool[1], ("pool", pool_id), "sending-ip-pool"
        if chosen is None:
            if own := inv.domain_ips.get(domain["id"]):
                chosen, key, via = own, ("domain", domain["id"]), "domain-ip"
            elif (pool_id := inv.domain_pool.get(domain["id"])) and pool_id in inv.pools:
                chosen, key, via = inv.pools[pool_id][1], ("pool", pool_id), "domain-pool"
        now = time.time() + inv.clock_skew
        if chosen:
            usable = [a for a in chosen if a in inv.local]
            address, granted = self._pick(inv, usable, key, now, recipients)
            if address is not None:
                return Choice(address, inv.ips[address]["helo"], via, granted)
            explicit = via in ("sending-ip", "sending-ip-pool")
            via = "overflow"
            if self.policy_for(domain["id"], explicit) == "wait":
                what = "the message's o:sending-ip(-pool)" if explicit else "the domain's IPs"
                raise NoEgressAvailable(self._retry_after(inv, usable, now),
                                        f"{what} are at their warm-up cap" if usable
                                        else f"{what} are disabled or not on this relay's host")
            if not usable:
                self._warn_once(f"domain:{domain['id']}", "domain %s: its IPs are disabled or not on host %s;"
                                " using the shared pool", domain.get("name"), self.host)
        address, granted = self._pick(inv, inv.shared, "shared", now, recipients)
        if address is not None:
            return Choice(address, inv.ips[address]["helo"], via, granted)
        if inv.shared or chosen:
            raise NoEgressAvailable(self._retry_after(inv, inv.shared or chosen, now),
                                    "every IP that may carry this message is at its warm-up cap")
        self._warn_once("no-shared", "no shared IPs on host %s: sending from the OS default address", self.host)
        return Choice(None, self.default_helo, recipients=recipients)

    def policy_for(self, domain_id: int, explicit: bool = False) -> str:
        """What happens to mail whose IPs cannot carry it here (at their cap, or on another host): the
        domain's own ip_overflow, else the relay's policy; mail that named its IP itself (o:sending-ip /
        o:sending-ip-pool) overflows only when its domain says so: the sender asked for that address."""
        own = self.inventory.policies.get(domain_id)
        return own or ("wait" if explicit else self.policy)

    def _pick(self, inv: Inventory, addresses: list[str], key: object, now: float,
              units: int = 1) -> tuple[str | None, int]:
        """The next address in turn with quota left, and how many of `units` recipients it may carry."""
        count = len(addresses)
        start = self._turn[key]
        for step in range(count):
            address = addresses[(start + step) % count]
            if granted := self._take(inv, address, now, units):
                self._turn[key] = (start + step + 1) % count
                return address, granted
        return None, 0

    def _take(self, inv: Inventory, address: str, now: float, units: int = 1) -> int:
        """Spend up to `units` of the address's warm-up quota (one per recipient); return how many it
        may send (all of them when it has no cap, 0 when its quota is spent)."""
        warm = inv.warm.get(address)
        if warm is None:
            return units
        started, plan = warm
        day = max(0, int((now - started) // warmup.DAY))
        if warmup.stage_on(plan, day) is None:
            return units  # warm-up complete
        key = (address, day)
        with self._lock:
            left = self._quota.get(key, 0)
            if left <= 0:
                if key not in self._exhausted:
                    self._wake.set()  # the refresher reserves more now
                return 0
            granted = min(left, units)
            self._quota[key] = left - granted
            self._spent[key] += granted
        return granted

    def _retry_after(self, inv: Inventory, addresses: list[str], now: float) -> float:
        waits = []
        for address in addresses:
            warm = inv.warm.get(address)
            if warm is None:
                continue
            day = max(0, int((now - warm[0]) // warmup.DAY))
            if (address, day) in self._exhausted:
                waits.append(warmup.DAY - ((now - warm[0]) % warmup.DAY))
            else:
                waits.append(self.refresh)
        return max(1.0, min(waits) if waits else self.refresh)

    def _warn_once(self, key: str, message: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    # background: reload the inventory, record usage, reserve quota ------------------------------
    def sync(self) -> None:
        with self.db.transaction() as conn:
            data = store.snapshot(conn)
        inv = Inventory.build(data, self.host, self.policy)
        restarted = {a for a, started in self._started.items() if inv.warm.get(a, (None,))[0] != started}
        self._started = {a: started for a, (started, _) in inv.warm.items()}
        if restarted:  # a warm-up was stopped or started again: its old quota and counts are void
            with self._lock:
                for table in (self._quota, self._spent):
                    for key in [k for k in table if k[0] in restarted]:
                        del table[key]
                self._exhausted = {k for k in self._exhausted if k[0] not in restarted}
        self._flush()
        now = data["now"].timestamp()
        wanted = []
        for address in sorted(inv.local & inv.warm.keys()):
            started, plan = inv.warm[address]
            day = max(0, int((now - started) // warmup.DAY))
            stage = warmup.stage_on(plan, day)
            if stage is None:
                continue
            key = (address, day)
            block = block_size(stage.cap)
            with self._lock:
                left = self._quota.get(key, 0)
            if left < max(1, block // 2) and key not in self._exhausted:
                wanted.append((key, stage.cap, block))
        grants = []
        if wanted:
            with self.db.transaction() as conn:
                for (address, day), cap, block in wanted:
                    grants.append(((address, day), store.reserve(conn, address, day, cap, block)))
        with self._lock:
            for key, granted in grants:
                if granted:
                    self._quota[key] = self._quota.get(key, 0) + granted
                else:
                    self._exhausted.add(key)
            # Quota of a day that is over, or of a warm-up restarted or stopped, is gone.
            live = {(a, max(0, int((now - s) // warmup.DAY))) for a, (s, _) in inv.warm.items()}
            for key in [k for k in self._quota if k not in live]:
                del self._quota[key]
            self._exhausted &= live
        self.inventory = inv

    def _flush(self, release: bool = False, direct: bool = False) -> None:
        with self._lock:
            spent, self._spent = self._spent, defaultdict(int)
            unspent = dict(self._quota) if release else {}
            if release:
                self._quota.clear()
        keys = set(spent) | set(unspent)
        if not keys:
            return
        try:
            # At exit the services' pool may already be closed: stop() uses a connection of its own.
            with (connect(self.db.dsn, autocommit=False) if direct else self.db.transaction()) as conn:
                for address, day in sorted(keys):
                    store.spend(conn, address, day, spent.get((address, day), 0), unspent.get((address, day), 0))
        except Exception:
            with self._lock:  # try again next round
                for key, count in spent.items():
                    self._spent[key] += count
                for key, count in unspent.items():
                    self._quota[key] = self._quota.get(key, 0) + count
            raise

    def counts(self) -> dict[str, int]:
        """Quota held in memory per address (for tests and diagnostics)."""
        with self._lock:
            out: dict[str, int] = defaultdict(int)
            for (address, _), left in self._quota.items():
                out[address] += left
            return dict(out)
