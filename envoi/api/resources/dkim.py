"""DKIM keys and their management, in Mailgun's shapes (envoi.accounts.dkim does the work):

  /v1/dkim/keys                                    GET list, POST create or import, DELETE
  /v4/domains/{authority}/keys/{selector}/activate   PUT  (the record must be found in DNS first)
  /v4/domains/{authority}/keys/{selector}/deactivate PUT
  /v1/dkim_management/domains/{d}/rotation          GET, PUT (rotation_enabled, rotation_interval)
  /v1/dkim_management/domains/{d}/rotate            POST (rotate now)
  /v3/domains/{d}/dkim_selector                     PUT  (dkim_selector)
  /v3/domains/{d}/dkim_authority                    PUT  (self=true|false)
"""

from __future__ import annotations

from urllib.parse import urlencode

import falcon

from envoi.accounts.dkim import DkimKeys, Key, format_interval
from envoi.accounts.service import dns_records
from envoi.api.errors import ApiError
from envoi.api.forms import read_form
from envoi.api.scope import query_params

TRUE, FALSE = {"true", "yes", "1"}, {"false", "no", "0"}
MAX_LIMIT = 100


def _one(fields: dict, name: str) -> str | None:
    values = fields.get(name)
    return values[-1] if values else None


def _query_and_form(req: falcon.Request) -> dict[str, list[str]]:
    """Mailgun documents dkim_selector and self as query parameters (mailgun.js sends them so, with an
    empty body); the Python SDK sends a form. Both are read; the body wins."""
    return {**query_params(req), **read_form(req)[0]}


def key_json(key: Key) -> dict:
    """Mailgun's key item (signing_domain, selector, dns_record) and Envoi's: active, state, algorithm, bits."""
    return {"signing_domain": key.signing_domain, "selector": key.selector, "dns_record": key.dns_record,
            "active": key.state == "active", "state": key.state, "algorithm": key.algorithm, "bits": key.bits}


class DkimKeyCollection:
    def __init__(self, dkim: DkimKeys):
        self.dkim = dkim

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = req.get_param_as_int("limit", min_value=1, max_value=MAX_LIMIT) or 10
        try:
            skip = int(req.get_param("page") or 0)
        except ValueError as ex:
            raise ApiError(400, "page is not a page of this list (use the paging URLs)") from ex
        if skip < 0:
            raise ApiError(400, "page is not a page of this list (use the paging URLs)")
        keys = self.dkim.list(req.context.principal.account_id, req.get_param("signing_domain"),
                              req.get_param("selector"))
        filters = {k: req.get_param(k) for k in ("signing_domain", "selector") if req.get_param(k)}

        def url(page: int) -> str:
            return "/v1/dkim/keys?" + urlencode({**filters, "limit": limit, **({"page": page} if page else {})})

        last = max(0, (len(keys) - 1) // limit * limit)
        resp.media = {"items": [key_json(k) for k in keys[skip:skip + limit]],
                      "paging": {"first": url(0), "last": url(last), "next": url(skip + limit),
                                 "previous": url(max(0, skip - limit))}}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        fields, files = read_form(req)
        pem = _one(fields, "pem")
        pem_bytes = pem.encode() if pem else (files["pem"][0].data if files.get("pem") else None)
        key = self.dkim.create(req.context.principal.account_id, _one(fields, "signing_domain"),
                               _one(fields, "selector"), bits=_one(fields, "bits"),
                               algorithm=_one(fields, "algorithm"), pem=pem_bytes)
        resp.media = {"signing_domain": key.signing_domain, "selector": key.selector, "dns_record": key.dns_record}

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.dkim.delete(req.context.principal.account_id, req.get_param("signing_domain"),
                         req.get_param("selector"))
        resp.media = {"message": "success"}


class DkimKeyActivation:
    def __init__(self, dkim: DkimKeys):
        self.dkim = dkim

    def on_put_activate(self, req: falcon.Request, resp: falcon.Response, domain: str, selector: str) -> None:
        key = self.dkim.activate(req.context.principal.account_id, domain, selector)
        resp.media = {"message": "domain key activated", "authority": key.signing_domain, "selector": key.selector,
                      "active": True}

    def on_put_deactivate(self, req: falcon.Request, resp: falcon.Response, domain: str, selector: str) -> None:
        key = self.dkim.deactivate(req.context.principal.account_id, domain, selector)
        resp.media = {"message": "domain key deactivated", "authority": key.signing_domain,
                      "selector": key.selector, "active": key.state == "active"}


def management_json(row: dict) -> dict:
    """Mailgun's dkim_management domain: its rotation settings and the DKIM records to publish (Mailgun
    publishes CNAMEs to its own zone; Envoi's records are the keys' TXT records)."""
    records = [{"name": r["name"], "type": r["record_type"], "identifier": "DKIM", "value": r["value"],
                "comment": "retiring: keep until mail signed with it has left the queue" if r.get("retiring")
                else "next key: publish it; signing moves to it once it is found" if r.get("pending")
                else "signing key"}
               for r in dns_records(row, spf_include="", mx_hosts=(), tracking_target="")["sending_dns_records"]
               if "._domainkey." in r["name"]]
    return {"domain": {"id": str(row["id"]), "account_id": str(row["account_id"]), "sid": str(row["id"]),
                       "name": row["name"], "state": "enabled" if row["state"] == "active" else "wait_verify",
                       "active_selector": row["dkim_selector"],
                       "rotation_enabled": "true" if row["dkim_rotation_enabled"] else "false",
                       "rotation_interval": format_interval(row["dkim_rotation_interval"])
                       if row.get("dkim_rotation_interval") else "",
                       "records": records}}


class DkimManagement:
    def __init__(self, dkim: DkimKeys, accounts):
        self.dkim = dkim
        self.accounts = accounts

    def on_get_rotation(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        resp.media = management_json(self.accounts.get_domain(domain, req.context.principal.account_id))

    def on_put_rotation(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        fields, _ = read_form(req)
        enabled = (_one(fields, "rotation_enabled") or "").lower()
        if enabled not in TRUE | FALSE:
            raise ApiError(400, "rotation_enabled must be true or false")
        row = self.dkim.set_rotation(req.context.principal.account_id, domain, enabled in TRUE,
                                     _one(fields, "rotation_interval"))
        resp.media = management_json(row)

    def on_post_rotate(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        self.dkim.rotate_now(req.context.principal.account_id, domain)
        resp.media = {"message": "ok"}


class DomainDkimSettings:
    """PUT /v3/domains/{d}/dkim_selector and /dkim_authority."""

    def __init__(self, dkim: DkimKeys, dns_settings: dict):
        self.dkim = dkim
        self.dns_settings = dns_settings

    def on_put_selector(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        fields = _query_and_form(req)
        selector = _one(fields, "dkim_selector")
        if selector is None:  # Mailgun: "If omitted no change is committed"
            self.dkim.accounts.get_domain(domain, req.context.principal.account_id)
        else:
            self.dkim.set_selector(req.context.principal.account_id, domain, selector)
        resp.media = {"message": "Domain DKIM selector updated"}

    def on_put_authority(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        fields = _query_and_form(req)
        own = (_one(fields, "self") or "").lower()
        if own not in TRUE | FALSE:
            raise ApiError(400, "self must be true or false")
        row, changed = self.dkim.set_authority(req.context.principal.account_id, domain, own in TRUE)
        resp.media = {"message": "Domain DKIM authority has been changed" if changed
                      else "Domain DKIM authority is unchanged", "changed": changed,
                      "sending_dns_records": dns_records(row, **self.dns_settings)["sending_dns_records"]}
