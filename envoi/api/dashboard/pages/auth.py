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


class Regions:
    """This region and the others' dashboards: the sign-in page's region switch (like Mailgun's), and the
    answer to an email of another region (routing, never transfer: envoi.accounts.routing)."""

    def __init__(self, region: str, urls: dict[str, str], router):
        self.region = region
        self.others = {r: f"{url.rstrip('/')}{PREFIX}/login" for r, url in sorted(urls.items()) if r != region}
        self.router = router

    def context(self) -> dict:
        return {"region": self.region.upper(), "other_regions": [(r.upper(), url) for r, url in self.others.items()]}

    def elsewhere(self, email: str) -> tuple[str, str | None] | None:
        """(region, its sign-in URL if configured) of an email unknown here that a peer region knows."""
        region = self.router.home_of("user", email) if email else None
        if region is None:
            return None
        return region.upper(), self.others.get(region)


class Login:
    auth, audience = SESSION, ANYONE

    def __init__(self, users, client_address, regions: Regions):
        self.users = users
        self.client_address = client_address
        self.regions = regions

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if getattr(req.context, "user", None) is not None:
            raise falcon.HTTPSeeOther(safe_next(req.get_param("next")))
        render(req, resp, "login.html", next=safe_next(req.get_param("next")), email="", error=None, need_code=False,
               **self.regions.context())

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = req.context.form
        email, target = form.get("email", "").strip(), safe_next(form.get("next"))
        page = {"next": target, "email": email, "need_code": False, **self.regions.context()}
        try:
            # An email of another region: say where to sign in; the failure is not counted (nothing of it
            # is kept here). A throttled address is refused first.
            self.users.throttle.check(email, self.client_address(req))
            if (home := self.regions.elsewhere(email)) is not None:
                region, url = home
                render(req, resp, "login.html", status=401, error=None, elsewhere=(region, url), **page)
                return
            _, token = self.users.login(email, form.get("password", ""), code=form.get("code") or None,
                                        ip=self.client_address(req), user_agent=req.user_agent or "")
        except SecondFactorRequired:
            render(req, resp, "login.html", status=401, error="Enter the code from your authenticator app (or a "
                   "recovery code).", **{**page, "need_code": True})
            return
        except (InvalidLogin, LoginThrottled) as ex:
            render(req, resp, "login.html", status=ex.http_status, error=ex.message, **page)
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
