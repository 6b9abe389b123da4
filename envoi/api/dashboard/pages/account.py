"""My account, for every signed-in person (customers and operators): profile, two-factor sign-in
(TOTP with recovery codes), sign out everywhere. Account admins also get the account's data export and
the account deletion form (Accounts.close, which the `lifecycle` branch brings)."""

from __future__ import annotations

import falcon

from envoi.accounts import sessions, totp
from envoi.accounts.errors import AccountsError, InvalidLogin
from envoi.api.auth import SESSION
from envoi.api.dashboard.gate import PREFIX, SIGNED_IN
from envoi.api.dashboard.pages.common import done_notice
from envoi.api.dashboard.pages.keys import page_actor
from envoi.api.dashboard.qr import qr_svg
from envoi.api.dashboard.templating import render
from envoi.api.errors import ApiError

DONE = {"totp_off": "Two-factor sign-in is off.", "totp_on": "Two-factor sign-in is on."}


def _is_account_admin(req: falcon.Request) -> bool:
    user = req.context.user
    return not user.is_operator and user.role == "admin"


class _Page:
    auth, audience = SESSION, SIGNED_IN

    def __init__(self, users, accounts, privacy, audit, client_address, subaccounts=None):
        self.users = users
        self.accounts = accounts
        self.privacy = privacy
        self.audit = audit
        self.client_address = client_address
        self.subaccounts = subaccounts  # envoi.accounts.subaccounts: the account page lists them

    def me(self, req: falcon.Request) -> dict:
        user = req.context.user
        return self.users.get_user(user.account_id, user.id)

    def page(self, req, resp, *, status: int = 200, error: str | None = None, notice: str = "",
             delete_error: str | None = None) -> None:
        user = req.context.user
        account = None if user.is_operator else self.accounts.get_account(user.account_id)
        subs = None  # a subaccount has none; the API manages them (/v5/accounts/subaccounts)
        if account is not None and account.get("parent_id") is None and self.subaccounts is not None:
            subs = self.subaccounts.list(account["id"], {"limit": 1000})
        render(req, resp, "account.html", status=status, me=self.me(req), account=account, subaccounts=subs,
               admin=_is_account_admin(req), error=error, notice=notice, delete_error=delete_error)


class AccountPage(_Page):
    """/dashboard/account."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.page(req, resp, notice=done_notice(req, DONE))


class TotpStart(_Page):
    """POST /dashboard/account/totp/start: a new secret for the person's authenticator app. Nothing is
    stored until they prove the app holds it (TotpConfirm)."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.setup(req, resp, totp.new_secret())

    def setup(self, req, resp, secret: str, *, status: int = 200, error: str | None = None) -> None:
        uri = totp.provisioning_uri(secret, req.context.user.email)
        render(req, resp, "account_totp.html", status=status, secret=secret, uri=uri, error=error, codes=None,
               qr=qr_svg(uri, title="QR code for your authenticator app"))


class TotpConfirm(TotpStart):
    """POST /dashboard/account/totp/confirm: a current code turns TOTP on; the recovery codes are shown
    in this response only."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = req.context.form
        secret = (form.get("secret") or "").strip()
        if len(secret) != 32 or not secret.isalnum():
            raise ApiError(400, "The setup has expired; start again")
        try:
            codes = self.users.enable_totp(self.me(req), secret, form.get("code", ""), ip=self.client_address(req))
        except AccountsError as ex:
            self.setup(req, resp, secret, status=ex.http_status, error=ex.message)
            return
        render(req, resp, "account_totp.html", secret="", uri="", error=None, codes=codes, qr="")


class TotpDisable(_Page):
    """POST /dashboard/account/totp/disable: needs the password or a current code again."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = req.context.form
        try:
            self.users.reauthenticate(req.context.user.id, password=form.get("password", ""),
                                      code=form.get("code", ""))
        except InvalidLogin:
            self.page(req, resp, status=401, error="That password or code is not right; two-factor sign-in stays on.")
            return
        self.users.disable_totp(self.me(req), actor=page_actor(req), ip=self.client_address(req))
        raise falcon.HTTPSeeOther(f"{PREFIX}/account?done=totp_off")


class SignOutEverywhere(_Page):
    """POST /dashboard/account/sessions: end every session of mine, this one too."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.users.logout_everywhere(self.me(req), actor=page_actor(req), ip=self.client_address(req))
        resp.append_header("Set-Cookie", sessions.clearing_cookie())
        raise falcon.HTTPSeeOther(f"{PREFIX}/login")


class AccountExport(_Page):
    """GET /dashboard/account/export: the account's data as a streamed JSON-lines download (admins)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not _is_account_admin(req):
            raise ApiError(403, "Only an account admin may export the account's data")
        account_id = req.context.user.account_id
        self.audit.record(account_id, page_actor(req), "account.exported", ip=self.client_address(req))
        resp.content_type = "application/x-ndjson"
        resp.downloadable_as = f"envoi-account-{account_id}.jsonl"
        resp.stream = (line.encode() for line in self.privacy.export_account(account_id))


class AccountDelete(_Page):
    """POST /dashboard/account/delete: typed confirmation of the account's name, then Accounts.close."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not _is_account_admin(req):
            raise ApiError(403, "Only an account admin may delete the account")
        account = self.accounts.get_account(req.context.user.account_id)
        if (req.context.form.get("confirm_name") or "").strip() != account["name"]:
            self.page(req, resp, status=400, delete_error="Type the account's name exactly to confirm; nothing was deleted.")
            return
        self.privacy.close_account(account["id"], actor=page_actor(req), ip=self.client_address(req))
        resp.append_header("Set-Cookie", sessions.clearing_cookie())
        raise falcon.HTTPSeeOther(f"{PREFIX}/login")
