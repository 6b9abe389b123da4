"""Mailing lists: /v3/lists and /v3/lists/{address}/members (Mailgun shapes; envoi.lists does the work).

Lists are account-wide (no {domain} in the path): every call is scoped by the caller's account, and
another account's list is a 404 like a list that does not exist."""

from __future__ import annotations

import falcon

from envoi.api.errors import ApiError
from envoi.api.forms import read_form
from envoi.api.params import check_json


def _last(fields: dict[str, list[str]]) -> dict[str, str]:
    return {k: v[-1] for k, v in fields.items() if v}


def _params(req: falcon.Request, names: tuple[str, ...]) -> dict[str, str]:
    return {k: req.get_param(k) for k in names if req.get_param(k) is not None}


def _account(req: falcon.Request) -> int:
    return req.context.principal.account_id


class MailingLists:
    def __init__(self, lists):
        self.lists = lists

    # /v3/lists
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.lists.list(_account(req), _params(req, ("limit", "skip", "address")))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        fields, _ = read_form(req)
        resp.media = self.lists.create(_account(req), _last(fields))

    # /v3/lists/pages
    def on_get_pages(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.lists.pages(_account(req), _params(req, ("limit", "page", "address", "p")))

    # /v3/lists/{address}
    def on_get_item(self, req: falcon.Request, resp: falcon.Response, address: str) -> None:
        resp.media = self.lists.get(_account(req), address)

    def on_put_item(self, req: falcon.Request, resp: falcon.Response, address: str) -> None:
        fields, _ = read_form(req)
        resp.media = self.lists.update(_account(req), address, _last(fields))

    def on_delete_item(self, req: falcon.Request, resp: falcon.Response, address: str) -> None:
        resp.media = self.lists.delete(_account(req), address)


class ListMembers:
    def __init__(self, lists):
        self.lists = lists

    # /v3/lists/{address}/members
    def on_get(self, req: falcon.Request, resp: falcon.Response, address: str) -> None:
        resp.media = self.lists.members(_account(req), address, _params(req, ("limit", "skip", "subscribed")))

    def on_post(self, req: falcon.Request, resp: falcon.Response, address: str) -> None:
        fields, _ = read_form(req)
        resp.media = self.lists.add_member(_account(req), address, _last(fields))

    # /v3/lists/{address}/members/pages
    def on_get_pages(self, req: falcon.Request, resp: falcon.Response, address: str) -> None:
        resp.media = self.lists.member_pages(_account(req), address,
                                             _params(req, ("limit", "page", "address", "p", "subscribed")))

    # /v3/lists/{address}/members/{member}
    def on_get_item(self, req: falcon.Request, resp: falcon.Response, address: str, member: str) -> None:
        resp.media = self.lists.member(_account(req), address, member)

    def on_put_item(self, req: falcon.Request, resp: falcon.Response, address: str, member: str) -> None:
        fields, _ = read_form(req)
        resp.media = self.lists.update_member(_account(req), address, member, _last(fields))

    def on_delete_item(self, req: falcon.Request, resp: falcon.Response, address: str, member: str) -> None:
        resp.media = self.lists.delete_member(_account(req), address, member)

    # /v3/lists/{address}/members.json: `members` (a JSON array) and `upsert`, as a form or a JSON body
    def on_post_json(self, req: falcon.Request, resp: falcon.Response, address: str) -> None:
        if (req.content_type or "").lower().startswith("application/json"):
            try:
                body = req.get_media()
            except falcon.MediaMalformedError as ex:
                raise ApiError(400, "request body is not valid JSON") from ex
            check_json(body)
            members, upsert = (body.get("members"), body.get("upsert")) if isinstance(body, dict) else (body, None)
        else:
            fields, files = read_form(req)
            members = fields.get("members", [None])[-1]
            if members is None and files.get("members"):
                members = files["members"][0].data.decode("utf-8", "replace")
            upsert = fields.get("upsert", [None])[-1]
        resp.media = self.lists.add_members_json(_account(req), address, members, upsert)

    # /v3/lists/{address}/members.csv: the CSV file as `members`, with `subscribed` and `upsert`
    def on_post_csv(self, req: falcon.Request, resp: falcon.Response, address: str) -> None:
        fields, files = read_form(req)
        uploads = files.get("members") or files.get("file") or []
        if uploads:
            data = uploads[0].data
        elif fields.get("members"):
            data = fields["members"][-1].encode()
        else:
            raise ApiError(400, "members parameter is missing: upload the CSV file as multipart field 'members'")
        resp.media = self.lists.add_members_csv(_account(req), address, data, _last(fields))
