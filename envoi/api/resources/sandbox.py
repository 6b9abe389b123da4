"""Authorised recipients (Mailgun's /v5/sandbox/auth_recipients): the only addresses an account's
unverified domains may send to, at most 5. Mailgun asks each recipient to confirm by email first;
Envoi lists them at once (it has no platform sending domain to send the invitation from)."""

from __future__ import annotations

import falcon

from envoi.api.errors import ApiError
from envoi.api.forms import read_form


def _json(address: str) -> dict:
    return {"email": address, "activated": True}


class AuthorizedRecipients:
    def __init__(self, accounts):
        self.accounts = accounts

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        rows = self.accounts.authorized_recipients(req.context.principal.account_id)
        resp.media = {"recipients": [_json(r["address"]) for r in rows]}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        email = req.get_param("email") or (read_form(req)[0].get("email") or [""])[-1]
        if not email:
            raise ApiError(400, "email parameter is missing")
        address = self.accounts.add_authorized_recipient(req.context.principal.account_id, email)
        resp.media = {"recipient": _json(address)}

    def on_delete_item(self, req: falcon.Request, resp: falcon.Response, email: str) -> None:
        self.accounts.delete_authorized_recipient(req.context.principal.account_id, email)
        resp.media = {"message": "Authorized recipient has been removed"}
