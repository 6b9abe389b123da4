"""Signing in and out, and accepting an invitation."""

from __future__ import annotations

import falcon

from envoi.accounts import sessions
from envoi.accounts.errors import (
    InvalidInput,
    InvalidLogin,
    InvitationInvalid,
    LoginThrottled,
    SecondFactorRequired,
)
from envoi.api.auth import SESSION
from envoi.api.dashboard.gate import ANYONE, PREFIX, safe_next
from envoi.api.dashboard.templating import render


class Home:
    """/dashboard: the first page a person may see."""
    auth, audience = SESSION, ANYONE

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        user = getattr(req.context, "user", None)
        if user is None:
            raise falcon.HTTPSeeOther(f"{PREFIX}/login")
        if user.is_operator:
            raise falcon.HTTPSeeOther(f"{PREFIX}/operator")
        first = next((page for page, action in (("overview", "read_stats"), ("logs", "read_logs"),
                                                ("billing", "manage_billing"), ("account", None)) if action is None or user.may(action)))
        raise falcon.HTTPSeeOther(f"{PREFIX}/{first}")


class Login:
    auth, audience = SESSION, ANYONE

    def __init__(self, users, client_address):
        self.users = users
        self.client_address = client_address

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if getattr(req.context, "user", None) is not None:
            raise falcon.HTTPSeeOther(safe_next(req.get_param("next")))
        render(req, resp, "login.html", next=safe_next(req.get_param("next")), email="", error=None, need_code=False)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = req.context.form
        email, target = form.get("email", "").strip(), safe_next(form.get("next"))
        try:
            _, token = self.users.login(email, form.get("password", ""), code=form.get("code") or None,
                                        ip=self.client_address(req), user_agent=req.user_agent or "")
        except SecondFactorRequired:
            render(req, resp, "login.html", status=401, next=target, email=email, need_code=True,
                   error="Enter the code from your authenticator app (or a recovery code).")
            return
        except (InvalidLogin, LoginThrottled) as ex:
            render(req, resp, "login.html", status=ex.http_status, next=target, email=email, need_code=False,
                   error=ex.message)
            return
        resp.append_header("Set-Cookie", sessions.cookie_attributes(token))
        raise falcon.HTTPSeeOther(target)


class Logout:
    auth, audience = SESSION, ANYONE

    def __init__(self, users, client_address):
        self.users = users
        self.client_address = client_address

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        token = getattr(req.context, "session_token", None)
        if token is not None:  # the gate has checked the form's CSRF token
            self.users.logout(token, ip=self.client_address(req))
        resp.append_header("Set-Cookie", sessions.clearing_cookie())
        raise falcon.HTTPSeeOther(f"{PREFIX}/login")


class Join:
    """An invitation link: /dashboard/join?token=..."""
    auth, audience = SESSION, ANYONE

    def __init__(self, users, client_address):
        self.users = users
        self.client_address = client_address

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        render(req, resp, "join.html", token=req.get_param("token") or "", error=None)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = req.context.form
        try:
            user = self.users.accept_invitation(form.get("token", ""), form.get("password", ""),
                                                ip=self.client_address(req))
        except (InvitationInvalid, InvalidInput) as ex:
            render(req, resp, "join.html", status=ex.http_status, token=form.get("token", ""), error=ex.message)
            return
        render(req, resp, "login.html", next=PREFIX, email=user["email"], need_code=False,
               error=None, notice="Welcome: sign in with your new password.")
