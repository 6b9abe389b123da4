"""Domains (/v4/domains) and SMTP credentials (/v3/domains/{d}/credentials)."""

from __future__ import annotations

import falcon

from envoi.accounts.service import dns_records
from envoi.api.errors import ApiError
from envoi.api.forms import read_form
from envoi.api.scope import DomainScoped

TRUE = {"true", "yes", "1"}
MAX_SKIP = 2**31 - 1  # Postgres takes OFFSET as bigint; no account has more domains than this


def rfc2822(dt) -> str:
    return dt.strftime("%a, %d %b %Y %H:%M:%S GMT")


def domain_json(row: dict) -> dict:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "state": row["state"],
        "type": row["type"],
        "is_disabled": row["state"] == "disabled",
        "created_at": rfc2822(row["created_at"]),
        "smtp_login": f"postmaster@{row['name']}",
        "spam_action": row["spam_action"],
        "wildcard": row["wildcard"],
        "web_prefix": row["web_prefix"],
        "web_scheme": row["web_scheme"],
        "require_tls": row["require_tls"],
        "skip_verification": row["skip_verification"],
    }


class DomainCollection:
    def __init__(self, accounts, dns_settings: dict):
        self.accounts = accounts
        self.dns_settings = dns_settings

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = req.get_param_as_int("limit", min_value=1, max_value=1000) or 100
        skip = req.get_param_as_int("skip", min_value=0, max_value=MAX_SKIP) or 0
        total, rows = self.accounts.list_domains(req.context.principal.account_id, req.get_param("state"),
                                                 limit, skip)
        resp.media = {"total_count": total, "items": [domain_json(r) for r in rows]}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        fields, _ = read_form(req)

        def one(name, default=None):
            values = fields.get(name)
            return values[-1] if values else default

        if not one("name"):
            raise ApiError(400, "name parameter is missing")
        try:
            key_size = int(one("dkim_key_size", "2048"))
        except ValueError as ex:
            raise ApiError(400, "dkim_key_size must be 1024 or 2048") from ex
        row = self.accounts.add_domain(
            req.context.principal.account_id,
            one("name"),
            dkim_selector=one("dkim_selector"),
            dkim_key_size=key_size,
            spam_action=one("spam_action", "disabled"),
            wildcard=one("wildcard", "false").lower() in TRUE,
            web_prefix=one("web_prefix", "email"),
            web_scheme=one("web_scheme", "http"),
            require_tls=one("require_tls", "false").lower() in TRUE,
            skip_verification=one("skip_verification", "false").lower() in TRUE,
        )
        if password := one("smtp_password"):
            self.accounts.create_credential(row["account_id"], row["name"], f"postmaster@{row['name']}", password)
        resp.media = {"message": "Domain DNS records have been created", "domain": domain_json(row),
                      **dns_records(row, **self.dns_settings)}


class DomainItem(DomainScoped):
    def __init__(self, accounts, dns_settings: dict, nameserver: tuple[str, int] | None = None):
        super().__init__(accounts)
        self.dns_settings = dns_settings
        self.nameserver = nameserver  # ENVOI_DNS_RESOLVER, for verification lookups

    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        row = self.domain(req, domain)
        resp.media = {"domain": domain_json(row), **dns_records(row, **self.dns_settings)}

    def on_put_verify(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        """PUT /v4|v3/domains/{d}/verify: look the records up now; found SPF and DKIM make it active."""
        row = self.domain(req, domain)
        row, records = self.accounts.verify_domain(row["account_id"], row["name"],
                                                   dns_records(row, **self.dns_settings), self.nameserver)
        resp.media = {"message": "Domain DNS records have been updated", "domain": domain_json(row), **records}

    def on_delete(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        self.accounts.delete_domain(req.context.principal.account_id, domain)
        resp.media = {"message": "Domain has been deleted"}


class Credentials(DomainScoped):
    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        rows = self.accounts.list_credentials(req.context.principal.account_id, domain)
        items = [{"login": r["login"], "mailbox": r["login"], "size_bytes": None,
                  "created_at": rfc2822(r["created_at"])} for r in rows]
        resp.media = {"total_count": len(items), "items": items}

    def on_post(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        fields, _ = read_form(req)
        login, password = (fields.get(k, [""])[-1] for k in ("login", "password"))
        if not login or not password:
            raise ApiError(400, "login and password parameters are required")
        self.accounts.create_credential(req.context.principal.account_id, domain, login, password)
        resp.media = {"message": "Created 1 credentials pair(s)"}

    def on_put_item(self, req: falcon.Request, resp: falcon.Response, domain: str, login: str) -> None:
        fields, _ = read_form(req)
        self.accounts.change_credential_password(req.context.principal.account_id, domain, login,
                                                 fields.get("password", [""])[-1])
        resp.media = {"message": "Password changed"}

    def on_delete_item(self, req: falcon.Request, resp: falcon.Response, domain: str, login: str) -> None:
        self.accounts.delete_credential(req.context.principal.account_id, domain, login)
        resp.media = {"message": "Credentials have been deleted", "spec": login}


def _recipient_json(address: str) -> dict:
    return {"email": address, "activated": True}


class AuthorizedRecipients:
    """Authorised recipients (Mailgun's /v5/sandbox/auth_recipients): the only addresses an account's
    unverified domains may send to, at most 5. Mailgun asks each recipient to confirm by email first;
    Envoi lists them at once (it has no platform sending domain to send the invitation from)."""

    def __init__(self, accounts):
        self.accounts = accounts

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        rows = self.accounts.authorized_recipients(req.context.principal.account_id)
        resp.media = {"recipients": [_recipient_json(r["address"]) for r in rows]}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        email = req.get_param("email") or (read_form(req)[0].get("email") or [""])[-1]
        if not email:
            raise ApiError(400, "email parameter is missing")
        address = self.accounts.add_authorized_recipient(req.context.principal.account_id, email)
        resp.media = {"recipient": _recipient_json(address)}

    def on_delete_item(self, req: falcon.Request, resp: falcon.Response, email: str) -> None:
        self.accounts.delete_authorized_recipient(req.context.principal.account_id, email)
        resp.media = {"message": "Authorized recipient has been removed"}
