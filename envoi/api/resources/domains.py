"""Domains (/v3 and /v4/domains, their connection settings and web prefix) and SMTP credentials
(/v3/domains/{d}/credentials). Mailgun's SDKs use both versions (the Python SDK creates, updates and
deletes at v3, lists at v4): each route answers at both."""

from __future__ import annotations

import falcon

from envoi.accounts.dkim import check_selector
from envoi.api.errors import ApiError
from envoi.api.forms import read_form
from envoi.api.params import check_json
from envoi.api.scope import DomainScoped, query_params

TRUE = {"true", "yes", "1"}
FALSE = {"false", "no", "0"}
MAX_SKIP = 2**31 - 1  # Postgres takes OFFSET as bigint; no account has more domains than this
CONNECTION_UPDATED = "Domain connection settings have been updated, may take 10 minutes to fully propagate"


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
        "ip_overflow": row.get("ip_overflow") or "default",  # Envoi's: pinned mail when its host is away
    }


def _fields(req: falcon.Request) -> dict[str, str]:
    """The last value of each parameter, from the query string and the body (the body wins): Mailgun's
    SDKs send domain settings every way: a form (the Python SDK), a query string or a JSON object
    (mailgun.js's updateConnection sends `{"require_tls": true}`, its updateWebPrefix `{}` and a query)."""
    merged = {k: v[-1] for k, v in query_params(req).items() if v}
    if not (req.content_length or req.get_header("Transfer-Encoding")):  # an empty body has nothing to read
        return merged
    if (req.content_type or "").lower().startswith("application/json"):
        try:
            body = req.get_media()
        except falcon.MediaMalformedError as ex:
            raise ApiError(400, "request body is not valid JSON") from ex
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        check_json(body)
        for key, value in body.items():
            if isinstance(value, bool):
                merged[key] = "true" if value else "false"
            elif isinstance(value, str | int | float):
                merged[key] = str(value)
        return merged
    merged.update({k: v[-1] for k, v in read_form(req)[0].items() if v})
    return merged


def _flag(fields: dict[str, str], name: str, default: bool | None = None) -> bool | None:
    value = fields.get(name)
    if value is None or value == "":
        return default
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise ApiError(400, f"{name} must be true or false")


def _settings(fields: dict[str, str]) -> dict:
    """The domain settings a create or an update names (None: not named)."""
    return {"spam_action": fields.get("spam_action"), "wildcard": _flag(fields, "wildcard"),
            "web_scheme": fields.get("web_scheme"), "web_prefix": fields.get("web_prefix"),
            "require_tls": _flag(fields, "require_tls"), "skip_verification": _flag(fields, "skip_verification")}


class DomainCollection:
    """GET (list) and POST (create) at /v3/domains and /v4/domains."""

    def __init__(self, accounts, dns_settings: dict, version: str = "v4", dkim=None):
        self.accounts = accounts
        self.dns_settings = dns_settings
        self.version = version
        self.dkim = dkim  # envoi.accounts.dkim.DkimKeys: force_dkim_authority=false at create

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = req.get_param_as_int("limit", min_value=1, max_value=1000) or 100
        skip = req.get_param_as_int("skip", min_value=0, max_value=MAX_SKIP) or 0
        account_id = req.context.principal.account_id
        include = _flag({"include_subaccounts": req.get_param("include_subaccounts") or ""}, "include_subaccounts")
        total, rows = self.accounts.list_domains(account_id, req.get_param("state") or None,
                                                 limit, skip, search=req.get_param("search"),
                                                 sort=req.get_param("sort") or None, include_subaccounts=bool(include))
        # A subaccount's domain says whose it is (the parent acts on it with X-Mailgun-On-Behalf-Of).
        resp.media = {"total_count": total, "items": [
            domain_json(r) | ({"subaccount_id": str(r["account_id"])} if r["account_id"] != account_id else {})
            for r in rows]}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        fields = _fields(req)
        if not fields.get("name"):
            raise ApiError(400, "name parameter is missing")
        try:
            key_size = int(fields.get("dkim_key_size") or "2048")
        except ValueError as ex:
            raise ApiError(400, "dkim_key_size must be 1024 or 2048") from ex
        settings = {k: v for k, v in _settings(fields).items() if v is not None}
        own_authority = _flag(fields, "force_dkim_authority")
        # the same rule as every other selector (one DNS label, any case taken as lower case)
        selector = check_selector(fields["dkim_selector"]) if fields.get("dkim_selector") else None
        row = self.accounts.add_domain(req.context.principal.account_id, fields["name"],
                                       dkim_selector=selector, dkim_key_size=key_size, **settings)
        if own_authority is False and self.dkim is not None:
            # Mailgun's force_dkim_authority=false: the same DKIM authority as the account's root domain
            # (dkim_authority self=false); with none in the account the domain stays its own (the default).
            row = self.dkim.authority_at_create(row)
        if password := fields.get("smtp_password"):
            self.accounts.create_credential(row["account_id"], row["name"], f"postmaster@{row['name']}", password)
        message = "Domain DNS records have been created" if self.version == "v4" else "Domain has been created"
        resp.media = {"message": message, "domain": domain_json(row),
                      **self.accounts.domain_records(row, self.dns_settings)}


class DomainItem(DomainScoped):
    """/v3|v4/domains/{d}: get, update, delete; verify; connection settings; web prefix."""

    def __init__(self, accounts, dns_settings: dict, nameserver: tuple[str, int] | None = None):
        super().__init__(accounts)
        self.dns_settings = dns_settings
        self.nameserver = nameserver  # ENVOI_DNS_RESOLVER, for verification lookups

    def _answer(self, resp: falcon.Response, row: dict, message: str | None = None) -> None:
        resp.media = {**({"message": message} if message else {}), "domain": domain_json(row),
                      **self.accounts.domain_records(row, self.dns_settings)}

    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        self._answer(resp, self.domain(req, domain))

    def on_put(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        """PUT /v4|v3/domains/{d}: spam_action, wildcard, web_scheme, web_prefix, require_tls,
        skip_verification, smtp_password (the postmaster login's), Envoi's ip_overflow. Unnamed settings stay as they are."""
        row = self.domain(req, domain)
        fields = _fields(req)
        row = self.accounts.update_domain(row["account_id"], row["name"], **_settings(fields),
                                          ip_overflow=fields.get("ip_overflow"))
        if password := fields.get("smtp_password"):
            self._set_postmaster_password(row, password)
        self._answer(resp, row, "Domain has been updated")

    def _set_postmaster_password(self, row: dict, password: str) -> None:
        login = f"postmaster@{row['name']}"
        if any(c["login"] == login for c in self.accounts.list_credentials(row["account_id"], row["name"])):
            self.accounts.change_credential_password(row["account_id"], row["name"], login, password)
        else:
            self.accounts.create_credential(row["account_id"], row["name"], login, password)

    def on_put_verify(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        """PUT /v4|v3/domains/{d}/verify: look the records up now; found SPF and DKIM make it active."""
        row = self.domain(req, domain)
        row, records = self.accounts.verify_domain(row["account_id"], row["name"],
                                                   self.accounts.domain_records(row, self.dns_settings),
                                                   self.nameserver)
        resp.media = {"message": "Domain DNS records have been updated", "domain": domain_json(row), **records}

    def on_delete(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        self.accounts.delete_domain(req.context.principal.account_id, domain)
        resp.media = {"message": "Domain has been deleted"}

    def on_get_connection(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        row = self.domain(req, domain)
        resp.media = {"connection": {"require_tls": row["require_tls"], "skip_verification": row["skip_verification"]}}

    def on_put_connection(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        """The domain's delivery defaults; a message's o:require-tls / o:skip-verification overrides them."""
        row = self.domain(req, domain)
        fields = _fields(req)
        row = self.accounts.update_domain(row["account_id"], row["name"],
                                          require_tls=_flag(fields, "require_tls"),
                                          skip_verification=_flag(fields, "skip_verification"))
        resp.media = {"message": CONNECTION_UPDATED, "require_tls": row["require_tls"],
                      "skip_verification": row["skip_verification"]}

    def on_put_web_prefix(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        """The tracking host's label: links go to <web_prefix>.<domain>, whose CNAME the records ask for."""
        row = self.domain(req, domain)
        prefix = _fields(req).get("web_prefix")
        if not prefix:
            raise ApiError(400, "web_prefix parameter is missing")
        self.accounts.update_domain(row["account_id"], row["name"], web_prefix=prefix.strip().lower())
        resp.media = {"message": "Domain web prefix updated"}


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
