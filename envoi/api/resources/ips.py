"""IPs, IP pools and warm-ups (Mailgun /v3/ips, /v3/domains/{d}/ips, /v1|v3/ip_pools, /v3/ip_warmups).

Operator keys manage everything; a customer's account key reads its own dedicated IPs, pools and
warm-ups (read-only: any change with a customer key is a 401, as an unknown key would be).
"""

from __future__ import annotations

import falcon

from envoi.api.auth import CUSTOMER
from envoi.api.errors import ApiError, unauthorized
from envoi.api.forms import read_form
from envoi.ips.service import SHARED, ip_json

TRUE = {"true", "yes", "1", "on"}
FALSE = {"false", "no", "0", "off"}


def params(req: falcon.Request, body: bool = True) -> dict[str, list[str]]:
    """Query string and form body together (Mailgun clients put DELETE/PATCH parameters in either)."""
    merged: dict[str, list[str]] = {k: req.get_param_as_list(k) or [] for k in req.params}
    if body and req.method in ("POST", "PUT", "PATCH", "DELETE") and req.content_length:
        fields, _ = read_form(req)
        for key, values in fields.items():
            merged.setdefault(key, []).extend(values)
    return merged


def one(fields: dict, name: str, default=None):
    values = fields.get(name)
    return values[-1] if values else default


def boolean(fields: dict, name: str) -> bool | None:
    value = one(fields, name)
    if value is None or value == "":
        return None
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise ApiError(400, f"{name} must be true or false")


def many(fields: dict, name: str) -> list[str]:
    out = []
    for value in fields.get(name, []):
        out.extend(v.strip() for v in value.split(",") if v.strip())
    return out


def actor(req: falcon.Request) -> str:
    return f"key:{req.context.principal.key_id}"


def is_operator(req: falcon.Request) -> bool:
    return req.context.principal.is_operator


def scope(req: falcon.Request) -> int | None:
    """The account whose IPs the caller may see; None = all (operator)."""
    return None if is_operator(req) else req.context.principal.account_id


def operator_only(req: falcon.Request) -> None:
    if not is_operator(req):
        raise unauthorized()


class Base:
    auth = CUSTOMER
    operator_too = True

    def __init__(self, ips, accounts):
        self.ips = ips
        self.accounts = accounts

    def domain(self, req: falcon.Request, name: str) -> dict:
        return self.accounts.get_domain(name, scope(req))


class IpCollection(Base):
    def on_get(self, req, resp) -> None:
        dedicated = boolean(params(req, body=False), "dedicated")
        account_id = scope(req)
        if account_id is not None:
            dedicated = True  # customers see their own dedicated IPs only
        rows = self.ips.list_ips(account_id, dedicated)
        resp.media = {"items": [r["address"] for r in rows], "total_count": len(rows),
                      "details": [ip_json(r, admin=account_id is None) for r in rows]}

    def on_post(self, req, resp) -> None:
        operator_only(req)
        f = params(req)
        if not one(f, "ip"):
            raise ApiError(400, "ip parameter is missing")
        row = self.ips.add_ip(actor(req), one(f, "ip"), host=one(f, "host"), helo=one(f, "helo", ""),
                              ptr=one(f, "ptr", ""), dedicated=bool(boolean(f, "dedicated")),
                              enabled=boolean(f, "enabled") is not False)
        resp.media = {"message": "success", "ip": ip_json(row, admin=True)}

    def on_get_export(self, req, resp) -> None:
        operator_only(req)
        resp.content_type = "text/csv; charset=utf-8"
        resp.downloadable_as = "dedicated-ip-assignments.csv"
        resp.text = self.ips.export_csv()

    def on_get_audit(self, req, resp) -> None:
        operator_only(req)
        limit = req.get_param_as_int("limit", min_value=1, max_value=1000) or 100
        rows = self.ips.audit_log(req.get_param("ip"), limit)
        resp.media = {"items": [{**r, "at": r["at"].isoformat()} for r in rows], "total_count": len(rows)}


class IpItem(Base):
    def on_get(self, req, resp, ip: str) -> None:
        row = self.ips.get_ip(ip, scope(req))
        resp.media = ip_json(row, admin=is_operator(req), pools=row["pools"] if is_operator(req) else None)

    def on_put(self, req, resp, ip: str) -> None:
        operator_only(req)
        f = params(req)
        changes = {"host": one(f, "host"), "helo": one(f, "helo"), "ptr": one(f, "ptr"),
                   "enabled": boolean(f, "enabled"), "dedicated": boolean(f, "dedicated")}  # validated first
        if "account_id" in f:
            value = (one(f, "account_id") or "").strip().lower()
            if value in ("", "none", "null"):
                self.ips.unassign_ip(actor(req), ip)
            else:
                try:
                    self.ips.assign_ip(actor(req), ip, int(value))
                except ValueError as ex:
                    raise ApiError(400, "account_id must be a number") from ex
        row = self.ips.update_ip(actor(req), ip, **changes)
        resp.media = {"message": "success", "ip": ip_json(row, admin=True)}

    def on_delete(self, req, resp, ip: str) -> None:
        operator_only(req)
        self.ips.delete_ip(actor(req), ip)
        resp.media = {"message": "success"}


class DomainIps(Base):
    def on_get(self, req, resp, domain: str) -> None:
        result = self.ips.domain_ips(self.domain(req, domain))
        resp.media = {"items": result["items"], "total_count": len(result["items"]), "pool_id": result["pool_id"]}

    def on_post(self, req, resp, domain: str) -> None:
        operator_only(req)
        row = self.domain(req, domain)
        f = params(req)
        if pool_id := one(f, "pool_id"):
            self.ips.link_pool(actor(req), row, pool_id)
        elif ip := one(f, "ip"):
            self.ips.add_domain_ip(actor(req), row, ip)
        else:
            raise ApiError(400, "ip or pool_id parameter is missing")
        resp.media = {"message": "success"}

    def on_delete_item(self, req, resp, domain: str, ip: str) -> None:
        operator_only(req)
        row = self.domain(req, domain)
        if ip == "ip_pool":
            self.ips.unlink_pool(actor(req), row)
        else:
            self.ips.remove_domain_ip(actor(req), row, ip)
        resp.media = {"message": "success"}


def pool_json(pool: dict) -> dict:
    return {"pool_id": pool["id"], "name": pool["name"], "description": pool["description"],
            "ips": list(pool["ips"]), "is_linked": pool["is_linked"], "account_id": pool["account_id"]}


class Pools(Base):
    def on_get(self, req, resp) -> None:
        resp.media = {"ip_pools": [pool_json(p) for p in self.ips.list_pools(scope(req))], "message": "success"}

    def on_post(self, req, resp) -> None:
        operator_only(req)
        f = params(req)
        account = one(f, "account_id")
        try:
            account_id = int(account) if account else None
        except ValueError as ex:
            raise ApiError(400, "account_id must be a number") from ex
        pool = self.ips.create_pool(actor(req), one(f, "name", ""), one(f, "description", ""), many(f, "ips")
                                    + many(f, "ip"), account_id)
        resp.media = {"message": "success", "pool_id": pool["id"]}

    def on_get_item(self, req, resp, pool_id: str) -> None:
        resp.media = {**pool_json(self.ips.get_pool(pool_id, scope(req))), "message": "success"}

    def on_patch_item(self, req, resp, pool_id: str) -> None:
        operator_only(req)
        f = params(req)
        self.ips.update_pool(actor(req), pool_id, name=one(f, "name"), description=one(f, "description"),
                             add_ips=many(f, "add_ip"), remove_ips=many(f, "remove_ip"))
        resp.media = {"message": "success"}

    def on_delete_item(self, req, resp, pool_id: str) -> None:
        operator_only(req)
        f = params(req)
        ip = one(f, "ip")
        self.ips.delete_pool(actor(req), pool_id, ip=ip.strip().lower() if ip and ip.strip().lower() == SHARED
                             else ip, replacement_pool=one(f, "pool_id"))
        resp.media = {"message": "started"}


class Warmups(Base):
    def on_get(self, req, resp) -> None:
        items = self.ips.warmups(scope(req))
        resp.media = {"items": items, "paging": {}, "total_count": len(items)}

    def on_get_item(self, req, resp, ip: str) -> None:
        resp.media = self.ips.warmup(ip, scope(req))

    def on_post_item(self, req, resp, ip: str) -> None:
        operator_only(req)
        f = params(req)
        self.ips.start_warmup(actor(req), ip, one(f, "plan"))
        resp.media = {"message": "success"}

    def on_delete_item(self, req, resp, ip: str) -> None:
        operator_only(req)
        self.ips.stop_warmup(actor(req), ip)
        resp.media = {"message": "success"}

