"""IPs: inventory, pools, dedicated assignment, warm-up, egress selection and the audit log.

Every change to who may send over which IP is written to ip_audit in the same transaction, with
the actor ("key:<id>" for the admin API, "cli:<user>" for `envoi ips`).
"""

from __future__ import annotations

import csv
import io
import ipaddress
from datetime import UTC, datetime

from envoi.accounts.limits import DEDICATED_IPS, PlanLimits, enforce
from envoi.infra import ids
from envoi.infra.db import Database
from envoi.ips import store, warmup
from envoi.ips.egress import EgressView
from envoi.ips.errors import Conflict, InvalidInput, IpNotAllowed, NotFound

SHARED = "shared"


def normalize_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address((value or "").strip()))
    except ValueError as ex:
        raise InvalidInput(f"'{value}' is not a valid IP address") from ex


def ip_json(row: dict, *, admin: bool = False, pools: list[str] | None = None) -> dict:
    out = {"ip": row["address"], "dedicated": row["dedicated"], "rdns": row["ptr"] or row["helo"],
           "enabled": row["enabled"], "is_on_warmup": bool(row.get("is_on_warmup"))}
    if admin:
        out.update({"host": row["host"], "helo": row["helo"], "ptr": row["ptr"], "account_id": row["account_id"],
                    "assigned_at": row["assigned_at"].isoformat() if row["assigned_at"] else None})
        if pools is not None:
            out["pools"] = pools
    return out


class Ips:
    def __init__(self, db: Database, *, default_plan: str, relay_host: str, limits: PlanLimits | None = None):
        self.db = db
        self.limits = limits  # plans' dedicated_ips, with billing on (envoi.accounts.limits)
        self.default_plan = warmup.parse_plan(default_plan)
        self.relay_host = relay_host

    # inventory ---------------------------------------------------------------------------------
    def add_ip(self, actor: str, address: str, *, host: str | None = None, helo: str = "", ptr: str = "",
               dedicated: bool = False, enabled: bool = True) -> dict:
        address = normalize_ip(address)
        host = (host or self.relay_host).strip()
        helo = (helo or ptr or "").strip().rstrip(".").lower()
        if not helo:
            raise InvalidInput("helo (the EHLO name of the IP) is required")
        with self.db.transaction() as conn:
            row = store.insert_ip(conn, address, host, helo, (ptr or helo).strip().rstrip(".").lower(),
                                  dedicated, enabled)
            if row is None:
                raise Conflict(f"IP {address} already exists")
            store.audit(conn, actor, "ip.add", address=address,
                        detail={"host": host, "helo": helo, "dedicated": dedicated, "enabled": enabled})
        return row

    def update_ip(self, actor: str, address: str, **changes) -> dict:
        address = normalize_ip(address)
        changes = {k: v for k, v in changes.items() if v is not None}
        for name in ("helo", "ptr"):
            if name in changes:
                changes[name] = str(changes[name]).strip().rstrip(".").lower()
        with self.db.transaction() as conn:
            row = self._ip(conn, address, lock=True)
            if changes.get("dedicated") is False and row["account_id"] is not None:
                raise Conflict(f"IP {address} is assigned to account {row['account_id']}; unassign it first")
            if changes.get("dedicated") is False and store.domains_using_ip(conn, address):
                raise Conflict(f"IP {address} is assigned to domains; remove it from them first")
            row = store.update_ip(conn, address, **changes)
            if changes:
                store.audit(conn, actor, "ip.update", address=address, detail=changes)
        return row

    def delete_ip(self, actor: str, address: str) -> None:
        address = normalize_ip(address)
        with self.db.transaction() as conn:
            row = self._ip(conn, address, lock=True)
            if row["account_id"] is not None:
                raise Conflict(f"IP {address} is assigned to account {row['account_id']}; unassign it first")
            store.remove_ip_everywhere(conn, address)
            store.delete_ip(conn, address)
            store.audit(conn, actor, "ip.delete", address=address)

    def list_ips(self, account_id: int | None = None, dedicated: bool | None = None) -> list[dict]:
        with self.db.transaction() as conn:
            return store.list_ips(conn, account_id, dedicated)

    def get_ip(self, address: str, account_id: int | None = None) -> dict:
        """One IP; with account_id, only if that account owns it (else NotFound, as for a stranger)."""
        address = normalize_ip(address)
        with self.db.transaction() as conn:
            rows = [r for r in store.list_ips(conn) if r["address"] == address]
            pools = [p["id"] for p in store.list_pools(conn) if address in p["ips"]]
        if not rows or (account_id is not None and rows[0]["account_id"] != account_id):
            raise NotFound(f"IP {address} not found")
        return {**rows[0], "pools": pools}

    # dedicated assignment to an account --------------------------------------------------------
    def assign_ip(self, actor: str, address: str, account_id: int) -> dict:
        address = normalize_ip(address)
        with self.db.transaction() as conn:
            row = self._ip(conn, address, lock=True)
            self._claim(conn, actor, row, account_id)
            return store.get_ip(conn, address)

    def unassign_ip(self, actor: str, address: str) -> None:
        """Take a dedicated IP back from its account: off its domains and pools too."""
        address = normalize_ip(address)
        with self.db.transaction() as conn:
            row = self._ip(conn, address, lock=True)
            if row["account_id"] is None:
                raise Conflict(f"IP {address} is not assigned to an account")
            for domain in store.domains_using_ip(conn, address):
                store.remove_domain_ip(conn, domain["id"], address)
                store.audit(conn, actor, "domain.ip.remove", address=address, account_id=row["account_id"],
                            domain=domain["name"], detail={"because": "ip.unassign"})
            for pool in store.list_pools(conn, row["account_id"]):
                if address in pool["ips"]:
                    store.remove_pool_ip(conn, pool["id"], address)
                    store.audit(conn, actor, "pool.ip.remove", address=address, account_id=row["account_id"],
                                pool_id=pool["id"], detail={"because": "ip.unassign"})
            store.update_ip(conn, address, account_id=None, assigned_at=None)
            store.audit(conn, actor, "ip.unassign", address=address, account_id=row["account_id"],
                        detail={"assigned_at": row["assigned_at"].isoformat() if row["assigned_at"] else None})

    def _claim(self, conn, actor: str, row: dict, account_id: int) -> None:
        """Make `row` the account's dedicated IP (no-op if it already is)."""
        address = row["address"]
        if not row["dedicated"]:
            raise Conflict(f"IP {address} is a shared IP; only dedicated IPs can be assigned")
        if row["account_id"] == account_id:
            return
        if row["account_id"] is not None:
            raise Conflict(f"IP {address} is assigned to another account")
        if not conn.execute("SELECT 1 FROM accounts WHERE id = %s", (account_id,)).fetchone():
            raise NotFound(f"Account not found: {account_id}")
        enforce(conn, self.limits, account_id, DEDICATED_IPS)
        store.update_ip(conn, address, account_id=account_id, assigned_at=datetime.now(UTC))
        store.audit(conn, actor, "ip.assign", address=address, account_id=account_id)

    # domains -----------------------------------------------------------------------------------
    def domain_ips(self, domain: dict) -> dict:
        with self.db.transaction() as conn:
            return {"items": store.domain_ips(conn, domain["id"]), "pool_id": store.domain_pool(conn, domain["id"])}

    def add_domain_ip(self, actor: str, domain: dict, address: str) -> None:
        address = normalize_ip(address)
        with self.db.transaction() as conn:
            row = self._ip(conn, address, lock=True)
            self._claim(conn, actor, row, domain["account_id"])
            if store.add_domain_ip(conn, domain["id"], address):
                store.audit(conn, actor, "domain.ip.add", address=address, account_id=domain["account_id"],
                            domain=domain["name"])

    def remove_domain_ip(self, actor: str, domain: dict, address: str) -> None:
        address = normalize_ip(address)
        with self.db.transaction() as conn:
            if not store.remove_domain_ip(conn, domain["id"], address):
                raise NotFound(f"IP {address} is not assigned to {domain['name']}")
            store.audit(conn, actor, "domain.ip.remove", address=address, account_id=domain["account_id"],
                        domain=domain["name"])

    def link_pool(self, actor: str, domain: dict, pool_id: str) -> None:
        with self.db.transaction() as conn:
            self._link(conn, actor, domain, pool_id)

    def _link(self, conn, actor: str, domain: dict, pool_id: str, because: str | None = None) -> None:
        pool = store.get_pool(conn, pool_id, lock=True)
        if pool is None:
            raise NotFound(f"IP pool {pool_id} not found")
        account_id = domain["account_id"]
        if pool["account_id"] is None:
            for address in store.pool_ips(conn, pool_id):
                self._claim(conn, actor, store.get_ip(conn, address, lock=True), account_id)
            store.update_pool(conn, pool_id, account_id=account_id)
            store.audit(conn, actor, "pool.assign", pool_id=pool_id, account_id=account_id)
        elif pool["account_id"] != account_id:
            raise Conflict(f"IP pool {pool_id} belongs to another account")
        store.link_pool(conn, domain["id"], pool_id)
        store.audit(conn, actor, "domain.pool.link", account_id=account_id, domain=domain["name"], pool_id=pool_id,
                    detail={"because": because} if because else None)

    def unlink_pool(self, actor: str, domain: dict) -> None:
        with self.db.transaction() as conn:
            pool_id = store.unlink_pool(conn, domain["id"])
            if pool_id is None:
                raise NotFound(f"Domain {domain['name']} has no linked IP pool")
            store.audit(conn, actor, "domain.pool.unlink", account_id=domain["account_id"], domain=domain["name"],
                        pool_id=pool_id)

    # pools -------------------------------------------------------------------------------------
    def create_pool(self, actor: str, name: str, description: str = "", ips: list[str] = (),
                    account_id: int | None = None) -> dict:
        name = (name or "").strip()
        if not name:
            raise InvalidInput("name parameter is missing")
        pool_id = ids.token(12)
        with self.db.transaction() as conn:
            if account_id is not None and not conn.execute("SELECT 1 FROM accounts WHERE id = %s",
                                                           (account_id,)).fetchone():
                raise NotFound(f"Account not found: {account_id}")
            pool = store.insert_pool(conn, pool_id, name, description or "", account_id)
            store.audit(conn, actor, "pool.create", pool_id=pool_id, account_id=account_id,
                        detail={"name": name})
            for address in ips:
                self._pool_add(conn, actor, pool, normalize_ip(address))
        return pool

    def _pool_add(self, conn, actor: str, pool: dict, address: str) -> None:
        row = self._ip(conn, address, lock=True)
        if not row["dedicated"]:
            raise Conflict(f"IP {address} is a shared IP; only dedicated IPs can join a pool")
        if pool["account_id"] is not None:
            self._claim(conn, actor, row, pool["account_id"])
        elif row["account_id"] is not None:
            raise Conflict(f"IP {address} is assigned to an account; the pool has none")
        if store.add_pool_ip(conn, pool["id"], address):
            store.audit(conn, actor, "pool.ip.add", address=address, account_id=pool["account_id"],
                        pool_id=pool["id"])

    def list_pools(self, account_id: int | None = None) -> list[dict]:
        with self.db.transaction() as conn:
            return store.list_pools(conn, account_id)

    def get_pool(self, pool_id: str, account_id: int | None = None) -> dict:
        for pool in self.list_pools(account_id):
            if pool["id"] == pool_id:
                return pool
        raise NotFound(f"IP pool {pool_id} not found")

    def update_pool(self, actor: str, pool_id: str, *, name: str | None = None, description: str | None = None,
                    add_ips: list[str] = (), remove_ips: list[str] = ()) -> None:
        with self.db.transaction() as conn:
            pool = store.get_pool(conn, pool_id, lock=True)
            if pool is None:
                raise NotFound(f"IP pool {pool_id} not found")
            changes = {k: v for k, v in (("name", name), ("description", description)) if v is not None}
            if changes:
                store.update_pool(conn, pool_id, **changes)
                store.audit(conn, actor, "pool.update", pool_id=pool_id, account_id=pool["account_id"],
                            detail=changes)
            for address in add_ips:
                self._pool_add(conn, actor, pool, normalize_ip(address))
            for address in remove_ips:
                address = normalize_ip(address)
                if not store.remove_pool_ip(conn, pool_id, address):
                    raise NotFound(f"IP {address} is not in pool {pool_id}")
                store.audit(conn, actor, "pool.ip.remove", address=address, account_id=pool["account_id"],
                            pool_id=pool_id)

    def delete_pool(self, actor: str, pool_id: str, *, ip: str | None = None,
                    replacement_pool: str | None = None) -> None:
        """Delete a pool; domains linked to it move to `replacement_pool`, to dedicated `ip`, or to the
        shared pool (ip="shared"). A linked pool needs a replacement, as in Mailgun."""
        with self.db.transaction() as conn:
            pool = store.get_pool(conn, pool_id, lock=True)
            if pool is None:
                raise NotFound(f"IP pool {pool_id} not found")
            linked = store.domains_linked_to(conn, pool_id)
            if linked and not (ip or replacement_pool):
                raise InvalidInput("the pool is linked to domains: give a replacement ip (or ip=shared) or pool_id")
            if replacement_pool == pool_id:
                raise InvalidInput("the replacement pool is the pool being deleted")
            for domain in linked:
                store.unlink_pool(conn, domain["id"])
                if replacement_pool:
                    self._link(conn, actor, domain, replacement_pool, because=f"pool.delete {pool_id}")
                elif ip and ip != SHARED:
                    address = normalize_ip(ip)
                    self._claim(conn, actor, self._ip(conn, address, lock=True), domain["account_id"])
                    store.add_domain_ip(conn, domain["id"], address)
                    store.audit(conn, actor, "domain.ip.add", address=address, account_id=domain["account_id"],
                                domain=domain["name"], detail={"because": f"pool.delete {pool_id}"})
                else:
                    store.audit(conn, actor, "domain.pool.unlink", account_id=domain["account_id"],
                                domain=domain["name"], pool_id=pool_id, detail={"because": "pool.delete"})
            store.delete_pool(conn, pool_id)
            store.audit(conn, actor, "pool.delete", pool_id=pool_id, account_id=pool["account_id"],
                        detail={"replacement": replacement_pool or ip})

    # warm-up -----------------------------------------------------------------------------------
    def start_warmup(self, actor: str, address: str, plan: str | None = None) -> dict:
        address = normalize_ip(address)
        stages = warmup.parse_plan(plan) if plan else self.default_plan
        with self.db.transaction() as conn:
            self._ip(conn, address)
            row = store.start_warmup(conn, address, stages)
            store.audit(conn, actor, "warmup.start", address=address, detail={"plan": stages})
        return row

    def stop_warmup(self, actor: str, address: str) -> None:
        address = normalize_ip(address)
        with self.db.transaction() as conn:
            if not store.stop_warmup(conn, address):
                raise NotFound(f"IP {address} is not warming up")
            store.audit(conn, actor, "warmup.stop", address=address)

    def warmups(self, account_id: int | None = None) -> list[dict]:
        with self.db.transaction() as conn:
            now = conn.execute("SELECT now() AS now").fetchone()["now"]
            return [warmup.progress(w["address"], w, store.usage(conn, w["address"]), now)
                    for w in store.list_warmups(conn, account_id)]

    def warmup(self, address: str, account_id: int | None = None) -> dict:
        address = normalize_ip(address)
        with self.db.transaction() as conn:
            row = store.get_warmup(conn, address)
            ip = store.get_ip(conn, address)
            if row is None or ip is None or (account_id is not None and ip["account_id"] != account_id):
                raise NotFound(f"IP {address} is not warming up")
            now = conn.execute("SELECT now() AS now").fetchone()["now"]
            return warmup.progress(address, row, store.usage(conn, address), now, details=True)

    def warmup_days(self, address: str) -> dict:
        """A warm-up day by day, for its chart: {"started_at", "today", "days": [{"day", "cap" (the plan's
        daily limit), "sent" (what the relays spent of it)}]} over the whole plan."""
        address = normalize_ip(address)
        with self.db.transaction() as conn:
            row = store.get_warmup(conn, address)
            if row is None:
                raise NotFound(f"IP {address} is not warming up")
            used = {u["day_no"]: u["used"] for u in store.usage(conn, address)}
            now = conn.execute("SELECT now() AS now").fetchone()["now"]
        days = [{"day": stage.first_day + n, "cap": stage.cap, "sent": used.get(stage.first_day + n, 0)}
                for stage in warmup.stages(row["plan"]) for n in range(stage.days)]
        return {"started_at": row["started_at"], "today": warmup.day_no(row["started_at"], now), "days": days}

    # the operator's view ------------------------------------------------------------------------
    def inventory(self) -> dict:
        """Everything the operator's IP page shows, in one read: {"ips": rows of list_ips with "pools",
        "domains" (names of the domains sending over it, directly or through a pool), "account_name"
        and "warmup" (progress or None)}, "pools": list_pools rows with "domains"}."""
        with self.db.transaction() as conn:
            ips = store.list_ips(conn)
            pools = store.list_pools(conn)
            direct = store.domain_assignments(conn)
            links = store.pool_links(conn)
            names = store.account_names(conn, sorted({r["account_id"] for r in ips + pools
                                                      if r["account_id"] is not None}))
            now = conn.execute("SELECT now() AS now").fetchone()["now"]
            warm = {w["address"]: warmup.progress(w["address"], w, store.usage(conn, w["address"]), now)
                    for w in store.list_warmups(conn)}
        pool_domains: dict[str, list[str]] = {}
        for link in links:
            pool_domains.setdefault(link["pool_id"], []).append(link["name"])
        out_pools = [{**p, "account_name": names.get(p["account_id"]), "domains": pool_domains.get(p["id"], [])}
                     for p in pools]
        out_ips = []
        for row in ips:
            member_of = [p for p in pools if row["address"] in p["ips"]]
            domains = sorted({d["name"] for d in direct if d["address"] == row["address"]}
                             | {name for p in member_of for name in pool_domains.get(p["id"], [])})
            out_ips.append({**row, "pools": [{"id": p["id"], "name": p["name"]} for p in member_of],
                            "domains": domains, "account_name": names.get(row["account_id"]),
                            "warmup": warm.get(row["address"])})
        return {"ips": out_ips, "pools": out_pools}

    def recent_use(self, address: str, *, hours: float = 24, scan: int = 5000, limit: int = 20) -> dict:
        """Which mail left over this IP lately: {"last_used_at", "deliveries": delivered events (ts, domain,
        recipient, message_id)}, from the delivered events of the domains that send over it (directly or
        through a pool), the last `scan` of each within `hours`. A shared IP serves any domain: its use is
        not looked up (that would read every domain's events)."""
        address = normalize_ip(address)
        with self.db.transaction() as conn:
            if store.get_ip(conn, address) is None:
                raise NotFound(f"IP {address} not found")
            domain_ids = {d["id"] for d in store.domains_using_ip(conn, address)}
            for pool in store.list_pools(conn):
                if address in pool["ips"]:
                    domain_ids |= {d["id"] for d in store.domains_linked_to(conn, pool["id"])}
            deliveries = store.recent_deliveries(conn, address, sorted(domain_ids), hours, scan, limit) \
                if domain_ids else []
        return {"last_used_at": deliveries[0]["ts"] if deliveries else None, "deliveries": deliveries,
                "hours": hours, "domains": len(domain_ids)}

    # accept-time check, audit, export ---------------------------------------------------------
    def check_sending(self, account_id: int, options: dict) -> None:
        """Raise IpNotAllowed unless the account owns the o:sending-ip / o:sending-ip-pool it names."""
        ip, pool_id = options.get("sending_ip"), options.get("sending_ip_pool")
        if not ip and not pool_id:
            return
        with self.db.transaction() as conn:
            if ip:
                try:
                    address = normalize_ip(ip)
                except InvalidInput:
                    raise IpNotAllowed(f"Rejected: IP {ip} can't be used to send the message") from None
                row = store.get_ip(conn, address)
                if row is None or not row["dedicated"] or row["account_id"] != account_id or not row["enabled"]:
                    raise IpNotAllowed(f"Rejected: IP {ip} can't be used to send the message")
            if pool_id:
                pool = store.get_pool(conn, pool_id)
                if pool is None or pool["account_id"] != account_id:
                    raise IpNotAllowed(f"Rejected: IP pool {pool_id} can't be used to send the message")

    def audit_log(self, address: str | None = None, limit: int = 100) -> list[dict]:
        with self.db.transaction() as conn:
            return store.audit_log(conn, normalize_ip(address) if address else None, limit)

    def export_csv(self) -> str:
        """Dedicated IP assignments for the IP registry's reassignment records: IP, customer, since."""
        with self.db.transaction() as conn:
            rows = store.assignments(conn)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(["ip", "customer_id", "customer", "assigned_since"])
        for r in rows:
            writer.writerow([r["address"], r["account_id"], _cell(r["account_name"]),
                             r["assigned_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if r["assigned_at"]
                             else ""])
        return out.getvalue()

    def dns_check(self, address: str | None = None, nameserver: tuple[str, int] | None = None,
                  timeout: float = 3.0) -> list[dict]:
        """For each IP: does its PTR name the expected host, and does its HELO name resolve back to it?
        (Forward-confirmed reverse DNS, which receivers check.)"""
        import dns.exception
        import dns.resolver
        import dns.reversename

        resolver = dns.resolver.Resolver(configure=nameserver is None)
        if nameserver is not None:
            resolver.nameservers, resolver.port = [nameserver[0]], nameserver[1]
        resolver.lifetime = timeout

        def lookup(name, rdtype) -> list[str]:
            try:
                return sorted(r.to_text().rstrip(".").lower() for r in resolver.resolve(name, rdtype))
            except (dns.exception.DNSException, OSError):
                return []

        rows = self.list_ips()
        if address:
            address = normalize_ip(address)
            rows = [r for r in rows if r["address"] == address]
            if not rows:
                raise NotFound(f"IP {address} not found")
        out = []
        for row in rows:
            version = ipaddress.ip_address(row["address"]).version
            ptr = lookup(dns.reversename.from_address(row["address"]), "PTR")
            forward = lookup(row["helo"], "A" if version == 4 else "AAAA")
            expected = row["ptr"] or row["helo"]
            out.append({"ip": row["address"], "helo": row["helo"], "ptr_expected": expected, "ptr_found": ptr,
                        "ptr_ok": expected in ptr, "helo_resolves_to": forward,
                        "helo_ok": row["address"] in forward})
        return out

    def egress_view(self, *, host: str, policy: str, refresh: float, default_helo: str) -> EgressView:
        return EgressView(self.db, host=host, policy=policy, refresh=refresh, default_helo=default_helo)

    @staticmethod
    def _ip(conn, address: str, lock: bool = False) -> dict:
        row = store.get_ip(conn, address, lock=lock)
        if row is None:
            raise NotFound(f"IP {address} not found")
        return row



def _cell(value: str) -> str:
    """Keep a spreadsheet from reading a customer name as a formula."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
