"""Domains: the account's sending domains, the DNS records each must publish (checked live on demand),
its SMTP credentials, tracking settings and DKIM key. The same services as /v4/domains,
/v3/domains/{d}/credentials and /v3/domains/{d}/tracking."""

from __future__ import annotations

import secrets

import falcon

from envoi.accounts.errors import AccountsError
from envoi.api.auth import SESSION
from envoi.api.dashboard.gate import PREFIX
from envoi.api.dashboard.pages.common import done_notice
from envoi.api.dashboard.templating import render
from envoi.infra.dkim_keys import RSA_KEY_SIZES
from envoi.mta.errors import TrackingSettingsError

MAX_LISTED = 1000
DONE = {  # ?done= codes -> the fixed confirmation shown (never free text from the URL)
    "added": "The domain was added. Publish its DNS records, then verify it.",
    "deleted": "The domain was deleted.",
    "credential-deleted": "The SMTP credential was deleted.",
    "tracking": "Tracking settings were saved.",
    "rotation": "A new DKIM key was made. Publish its record, then Verify now: signing moves to it once found.",
}
TRACKING_KINDS = ("open", "click", "unsubscribe")


def _password(form: dict) -> str:
    """The typed password, or a generated one (24 characters: within SMTP's 5..32 limit)."""
    return form.get("password") or secrets.token_urlsafe(18)


class DomainList:
    """/dashboard/domains: list and add."""
    auth, reads, writes = SESSION, "manage_domains", "manage_domains"

    def __init__(self, accounts):
        self.accounts = accounts

    def _render(self, req, resp, *, status: int = 200, error: str | None = None, name: str = "") -> None:
        total, rows = self.accounts.list_domains(req.context.user.account_id, limit=MAX_LISTED)
        render(req, resp, "domains.html", status=status, domains=rows, total=total, error=error, name=name,
               key_sizes=RSA_KEY_SIZES, notice=done_notice(req, DONE))

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._render(req, resp)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = req.context.form
        name = form.get("name", "").strip()
        try:
            size = int(form.get("dkim_key_size") or 2048)
            row = self.accounts.add_domain(req.context.user.account_id, name, dkim_key_size=size)
        except ValueError:
            self._render(req, resp, status=400, error="Choose a DKIM key size from the list", name=name)
            return
        except AccountsError as ex:
            self._render(req, resp, status=ex.http_status, error=ex.message, name=name)
            return
        raise falcon.HTTPSeeOther(f"{PREFIX}/domains/{row['name']}?done=added")


class DomainPage:
    """/dashboard/domains/{domain} and its actions (one route each, by suffix)."""
    auth, reads, writes = SESSION, "manage_domains", "manage_domains"

    def __init__(self, accounts, tracking, dns_settings: dict, nameserver: tuple[str, int] | None):
        self.accounts = accounts
        self.tracking = tracking
        self.dns_settings = dns_settings
        self.nameserver = nameserver  # ENVOI_DNS_RESOLVER, as the API's verify

    def _domain(self, req: falcon.Request, name: str) -> dict:
        return self.accounts.get_domain(name, req.context.user.account_id)  # another account's: NotFound

    def _render(self, req, resp, row: dict, *, status: int = 200, records: dict | None = None,
                checked: bool = False, error: str | None = None, secret: dict | None = None,
                notice: str = "") -> None:
        records = records or self.accounts.domain_records(row, self.dns_settings)
        credentials = self.accounts.list_credentials(row["account_id"], row["name"])
        tracking = self.tracking.settings_json(row)["tracking"]
        keys = [r for r in records["sending_dns_records"] if "._domainkey." in r["name"]]
        dkim = next(r for r in keys if not r.get("pending"))
        pending = next((r for r in keys if r.get("pending")), None)
        render(req, resp, "domain.html", status=status, domain=row, records=records, checked=checked,
               credentials=credentials, tracking=tracking, dkim=dkim, pending_dkim=pending, error=error, secret=secret,
               notice=notice or done_notice(req, DONE))

    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        self._render(req, resp, self._domain(req, domain))

    def on_post_verify(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        """Look every record up now (as PUT /v4/domains/{d}/verify) and show what was found."""
        row = self._domain(req, domain)
        try:
            row, records = self.accounts.verify_domain(row["account_id"], row["name"],
                                                       self.accounts.domain_records(row, self.dns_settings),
                                                       self.nameserver)
        except AccountsError as ex:
            self._render(req, resp, row, status=ex.http_status, error=ex.message)
            return
        state = "The domain is verified." if row["state"] == "active" else (
            "Not verified yet: the SPF and DKIM records must both be found.")
        self._render(req, resp, row, records=records, checked=True, notice=f"Records checked. {state}")

    def on_post_rotate(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        """A new DKIM key, pending until its record is found (Accounts.rotate_dkim_key)."""
        row = self.accounts.rotate_dkim_key(req.context.user.account_id, self._domain(req, domain)["name"])
        raise falcon.HTTPSeeOther(f"{PREFIX}/domains/{row['name']}?done=rotation")

    def on_post_delete(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        self.accounts.delete_domain(req.context.user.account_id, self._domain(req, domain)["name"])
        raise falcon.HTTPSeeOther(f"{PREFIX}/domains?done=deleted")

    # SMTP credentials: a new password is shown once, in this response
    def on_post_credentials(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        row, form = self._domain(req, domain), req.context.form
        login, password = form.get("login", "").strip(), _password(form)
        if not login:
            self._render(req, resp, row, status=400, error="Enter a login, such as postmaster")
            return
        try:
            created = self.accounts.create_credential(row["account_id"], row["name"], login, password)
        except AccountsError as ex:
            self._render(req, resp, row, status=ex.http_status, error=ex.message)
            return
        self._render(req, resp, row, secret={"login": created["login"], "password": password},
                     notice="SMTP credential created.")

    def on_post_password(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        row, form = self._domain(req, domain), req.context.form
        login, password = form.get("login", ""), _password(form)
        try:
            self.accounts.change_credential_password(row["account_id"], row["name"], login, password)
        except AccountsError as ex:
            if ex.http_status == 404:
                raise
            self._render(req, resp, row, status=ex.http_status, error=ex.message)
            return
        self._render(req, resp, row, secret={"login": login, "password": password}, notice="Password changed.")

    def on_post_credential_delete(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        row = self._domain(req, domain)
        self.accounts.delete_credential(row["account_id"], row["name"], req.context.form.get("login", ""))
        raise falcon.HTTPSeeOther(f"{PREFIX}/domains/{row['name']}?done=credential-deleted")

    def on_post_tracking(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        """The three switches in one form: each kind's `active` as PUT /v3/domains/{d}/tracking/{kind}."""
        row, form = self._domain(req, domain), req.context.form
        values = {kind: form.get(kind, "no") for kind in TRACKING_KINDS}  # an unticked box sends nothing
        allowed = {"open": ("yes", "no"), "click": ("yes", "no", "htmlonly"), "unsubscribe": ("yes", "no")}
        wrong = [kind for kind, value in values.items() if value not in allowed[kind]]
        if wrong:  # checked before any is saved: a bad form changes nothing
            self._render(req, resp, row, status=400, error=f"{wrong[0]} tracking must be one of the choices shown")
            return
        try:
            for kind, value in values.items():
                self.tracking.update_settings(row, kind, {"active": value})
        except TrackingSettingsError as ex:
            self._render(req, resp, row, status=400, error=ex.message)
            return
        raise falcon.HTTPSeeOther(f"{PREFIX}/domains/{row['name']}?done=tracking")
