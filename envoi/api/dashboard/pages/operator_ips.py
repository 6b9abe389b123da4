"""Operator pages for the IP inventory: IPs, pools, dedicated assignment to an account or a domain,
warm-up progress and what an IP sent lately. Every change goes through envoi.ips.service.Ips, the
same calls the /v3/ips, /v3/domains/{d}/ips and /v3/ip_pools resources make (their validation, their
ip_audit rows, with the operator as actor)."""

from __future__ import annotations

import falcon

from envoi.api.auth import SESSION
from envoi.api.dashboard.charts import line_chart
from envoi.api.dashboard.gate import OPERATOR, PREFIX
from envoi.api.dashboard.pages.common import done_notice
from envoi.api.dashboard.pages.operator import actor
from envoi.api.dashboard.templating import render
from envoi.infra.errors import EnvoiError

DONE = {"assigned": "The IP is assigned.", "unassigned": "The IP is back in the free inventory.",
        "domain-added": "The domain now sends over the IP.", "domain-removed": "The domain no longer sends over the IP.",
        "pool-created": "The pool is created.", "pool-changed": "The pool is changed.",
        "pool-linked": "The domain now sends over the pool.", "pool-unlinked": "The domain no longer sends over the pool.",
        "warmup-started": "The warm-up has started.", "warmup-stopped": "The warm-up is stopped."}


class FormError(Exception):
    """A form field the service would not even be asked about (400, the page says which)."""

    http_status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def field(req: falcon.Request, name: str) -> str:
    return (req.context.form.get(name) or "").strip()


def account_id_of(req: falcon.Request, *, required: bool) -> int | None:
    value = field(req, "account_id")
    if not value:
        if required:
            raise FormError("account_id is required")
        return None
    try:
        return int(value)
    except ValueError:
        raise FormError("account_id must be a number") from None


class OperatorIps:
    """/dashboard/operator/ips (the inventory and pools) and its forms:
    POST .../ips/assign (ip, account_id), .../ips/assign-domain (ip, domain), .../pools (name,
    description, account_id, ips), .../pools/{pool_id}/add and .../remove (ip), .../pools/{pool_id}/link
    and .../unlink (domain)."""
    auth, audience = SESSION, OPERATOR

    def __init__(self, ips, accounts):
        self.ips = ips
        self.accounts = accounts

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.show(req, resp)

    def show(self, req: falcon.Request, resp: falcon.Response, *, error: str | None = None, status: int = 200) -> None:
        inventory = self.ips.inventory()
        form = getattr(req.context, "form", None) or {}
        render(req, resp, "operator_ips.html", status=status, ips=inventory["ips"], pools=inventory["pools"],
               dedicated=[r["address"] for r in inventory["ips"] if r["dedicated"]],
               error=error, notice=done_notice(req, DONE), form=form)

    def on_post_assign(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._do(req, resp, "assigned", lambda: self.ips.assign_ip(
            actor(req), field(req, "ip"), account_id_of(req, required=True)))

    def on_post_assign_domain(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._do(req, resp, "domain-added", lambda: self.ips.add_domain_ip(actor(req), self._domain(req),
                                                                           field(req, "ip")))

    def on_post_pools(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._do(req, resp, "pool-created", lambda: self.ips.create_pool(
            actor(req), field(req, "name"), field(req, "description"),
            [ip for ip in req.context.form_lists.get("ips", []) if ip.strip()], account_id_of(req, required=False)))

    def on_post_pool_add(self, req: falcon.Request, resp: falcon.Response, pool_id: str) -> None:
        self._do(req, resp, "pool-changed", lambda: self.ips.update_pool(actor(req), pool_id,
                                                                         add_ips=[field(req, "ip")]))

    def on_post_pool_remove(self, req: falcon.Request, resp: falcon.Response, pool_id: str) -> None:
        self._do(req, resp, "pool-changed", lambda: self.ips.update_pool(actor(req), pool_id,
                                                                         remove_ips=[field(req, "ip")]))

    def on_post_pool_link(self, req: falcon.Request, resp: falcon.Response, pool_id: str) -> None:
        self._do(req, resp, "pool-linked", lambda: self.ips.link_pool(actor(req), self._domain(req), pool_id))

    def on_post_pool_unlink(self, req: falcon.Request, resp: falcon.Response, pool_id: str) -> None:
        def unlink():
            domain = self._domain(req)
            if self.ips.domain_ips(domain)["pool_id"] != pool_id:
                raise FormError(f"{domain['name']} is not linked to this pool")
            self.ips.unlink_pool(actor(req), domain)
        self._do(req, resp, "pool-unlinked", unlink)

    def _domain(self, req: falcon.Request) -> dict:
        name = field(req, "domain")
        if not name:
            raise FormError("domain is required")
        return self.accounts.get_domain(name, None)

    def _do(self, req: falcon.Request, resp: falcon.Response, done: str, change) -> None:
        """Run a change; a refusal re-renders the page with the service's words (nothing was changed:
        each service call is one transaction)."""
        try:
            change()
        except (EnvoiError, FormError) as ex:
            self.show(req, resp, error=ex.message, status=ex.http_status)
            return
        raise falcon.HTTPSeeOther(f"{PREFIX}/operator/ips?done={done}")


class OperatorIp:
    """/dashboard/operator/ips/{ip}: one IP, its domains and pools, its warm-up chart, the mail it sent
    lately, its audit trail; POST .../unassign, .../domains/remove (domain), .../warmup (plan),
    .../warmup/stop."""
    auth, audience = SESSION, OPERATOR

    def __init__(self, ips, accounts):
        self.ips = ips
        self.accounts = accounts

    def on_get(self, req: falcon.Request, resp: falcon.Response, ip: str) -> None:
        self.show(req, resp, ip)

    def show(self, req: falcon.Request, resp: falcon.Response, ip: str, *, error: str | None = None,
             status: int = 200) -> None:
        row = self.ips.get_ip(ip)  # NotFound -> the 404 page
        address = row["address"]
        inventory = next(r for r in self.ips.inventory()["ips"] if r["address"] == address)
        days = self.ips.warmup_days(address) if inventory["warmup"] is not None else None
        dns = self.ips.dns_check(address) if req.get_param("check") == "dns" else None
        render(req, resp, "operator_ip.html", status=status, ip=inventory, warmup=inventory["warmup"],
               days=days, chart=warmup_chart(days) if days else None, use=self.ips.recent_use(address),
               audit=self.ips.audit_log(address, 50), dns=dns[0] if dns else None,
               account_name=inventory["account_name"], error=error, notice=done_notice(req, DONE))

    def on_post_unassign(self, req: falcon.Request, resp: falcon.Response, ip: str) -> None:
        self._do(req, resp, ip, "unassigned", lambda: self.ips.unassign_ip(actor(req), ip))

    def on_post_remove_domain(self, req: falcon.Request, resp: falcon.Response, ip: str) -> None:
        def remove():
            name = field(req, "domain")
            if not name:
                raise FormError("domain is required")
            self.ips.remove_domain_ip(actor(req), self.accounts.get_domain(name, None), ip)
        self._do(req, resp, ip, "domain-removed", remove)

    def on_post_warmup(self, req: falcon.Request, resp: falcon.Response, ip: str) -> None:
        self._do(req, resp, ip, "warmup-started",
                 lambda: self.ips.start_warmup(actor(req), ip, field(req, "plan") or None))

    def on_post_warmup_stop(self, req: falcon.Request, resp: falcon.Response, ip: str) -> None:
        self._do(req, resp, ip, "warmup-stopped", lambda: self.ips.stop_warmup(actor(req), ip))

    def _do(self, req: falcon.Request, resp: falcon.Response, ip: str, done: str, change) -> None:
        row = self.ips.get_ip(ip)  # an unknown IP is the 404 page, before anything else
        try:
            change()
        except (EnvoiError, FormError) as ex:
            self.show(req, resp, ip, error=ex.message, status=ex.http_status)
            return
        raise falcon.HTTPSeeOther(f"{PREFIX}/operator/ips/{row['address']}?done={done}")


def warmup_chart(days: dict):
    """Planned daily limit against what was sent each day; days still to come have no 'sent' point."""
    labels = [f"day {d['day'] + 1}" for d in days["days"]]
    sent = [d["sent"] if d["day"] <= days["today"] else None for d in days["days"]]
    return line_chart("Warm-up", labels, {"Planned daily limit": [d["cap"] for d in days["days"]], "Sent": sent})
