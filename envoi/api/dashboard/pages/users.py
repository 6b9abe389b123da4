"""Users of the account: list with pending invitations, invite (the link shown once), change a role,
remove a user, end a user's sessions. Every change goes through envoi.accounts.users.Users (audited in
the same transaction as the change)."""

from __future__ import annotations

import falcon

from envoi.accounts import roles
from envoi.accounts.errors import AccountsError
from envoi.api.auth import SESSION
from envoi.api.dashboard.gate import PREFIX
from envoi.api.dashboard.pages.common import done_notice
from envoi.api.dashboard.pages.keys import page_actor
from envoi.api.dashboard.templating import render

DONE = {
    "role": "The role is changed; it applies to their next page or call.",
    "removed": "The user is removed and signed out.",
    "sessions": "Every session of that user has ended.",
    "revoked": "The invitation is withdrawn; its link no longer works.",
}
ROLE_HELP = {
    "admin": "everything",
    "developer": "everything but users, billing and the audit log",
    "support": "reads logs and stats, manages suppressions",
    "analyst": "reads logs and stats",
    "billing": "billing only",
}


class UserList:
    """/dashboard/users: GET lists users and invitations, POST invites."""
    auth, reads, writes = SESSION, "manage_users", "manage_users"

    def __init__(self, users, client_address, public_url: str):
        self.users = users
        self.client_address = client_address
        self.public_url = public_url  # the link's base: the configured address, never the request's Host

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._page(req, resp, notice=done_notice(req, DONE))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form, user = req.context.form, req.context.user
        try:
            invitation, token = self.users.invite(user.account_id, form.get("email", ""), form.get("role", ""),
                                                  actor=page_actor(req), actor_role=user.role,
                                                  ip=self.client_address(req))
        except AccountsError as ex:
            self._page(req, resp, status=ex.http_status, error=ex.message, form=form)
            return
        # The link is in this response only (status 200): the token is stored hashed.
        link = f"{self.public_url}{PREFIX}/join?token={token}"
        self._page(req, resp, invited={**invitation, "link": link})

    def _page(self, req, resp, *, status: int = 200, error: str | None = None, form: dict | None = None,
              invited: dict | None = None, notice: str = "") -> None:
        account_id = req.context.user.account_id
        render(req, resp, "users.html", status=status, people=self.users.list_users(account_id),
               invitations=self.users.list_invitations(account_id), roles=roles.ROLES, role_help=ROLE_HELP,
               error=error, form=form or {}, invited=invited, notice=notice)


class UserActions:
    """/dashboard/users/{user_id}/(role|remove|sessions): an admin's changes to one user of the account
    (another account's user is a 404)."""
    auth, reads, writes = SESSION, "manage_users", "manage_users"

    def __init__(self, users, client_address):
        self.users = users
        self.client_address = client_address

    def on_post_role(self, req: falcon.Request, resp: falcon.Response, user_id: int) -> None:
        self._do(req, resp, lambda account_id, **who: self.users.change_role(
            account_id, user_id, req.context.form.get("role", ""), **who), "role", user_id)

    def on_post_remove(self, req: falcon.Request, resp: falcon.Response, user_id: int) -> None:
        self._do(req, resp, lambda account_id, **who: self.users.remove(account_id, user_id, **who), "removed",
                 user_id)

    def on_post_sessions(self, req: falcon.Request, resp: falcon.Response, user_id: int) -> None:
        def end(account_id, **who):
            self.users.logout_everywhere(self.users.get_user(account_id, user_id), **who)
        self._do(req, resp, end, "sessions", user_id)

    def _do(self, req, resp, action, done: str, user_id: int) -> None:
        account_id = req.context.user.account_id
        try:
            action(account_id, actor=page_actor(req), ip=self.client_address(req))
        except AccountsError as ex:
            if ex.http_status == 404:
                raise
            render(req, resp, "users.html", status=ex.http_status, people=self.users.list_users(account_id),
                   invitations=self.users.list_invitations(account_id), roles=roles.ROLES, role_help=ROLE_HELP,
                   error=ex.message, form={}, invited=None, notice="")
            return
        if user_id == req.context.user.id:
            raise falcon.HTTPSeeOther(PREFIX)  # my own role or sessions changed: this page may be gone for me
        raise falcon.HTTPSeeOther(f"{PREFIX}/users?done={done}")


class Invitation:
    """/dashboard/users/invitations/{invitation_id}/revoke."""
    auth, reads, writes = SESSION, "manage_users", "manage_users"

    def __init__(self, users, client_address):
        self.users = users
        self.client_address = client_address

    def on_post(self, req: falcon.Request, resp: falcon.Response, invitation_id: int) -> None:
        self.users.revoke_invitation(req.context.user.account_id, invitation_id, actor=page_actor(req),
                                     ip=self.client_address(req))
        raise falcon.HTTPSeeOther(f"{PREFIX}/users?done=revoked")
