"""Mailgun's address validation: /v4/address/validate (GET, POST) and bulk jobs under
/v4/address/validate/bulk; results download through signed links (envoi.validation)."""

from __future__ import annotations

import json

import falcon

from envoi.api.auth import PUBLIC
from envoi.api.errors import ApiError
from envoi.api.forms import read_form
from envoi.validation.service import csv_lines


class AddressValidate:
    def __init__(self, validation):
        self.validation = validation

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._validate(req, resp, req.get_param("address"))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        fields, _ = read_form(req)
        values = fields.get("address") or [req.get_param("address")]
        self._validate(req, resp, values[-1])

    def _validate(self, req: falcon.Request, resp: falcon.Response, address: str | None) -> None:
        # provider_lookup (Mailgun: ask the mailbox provider) is accepted and changes nothing: no SMTP
        # probe of third parties here (docs/validation.md).
        address = self.validation.requested(address)
        with self.validation.slot(req.context.principal.account_id):
            resp.media = self.validation.validate(address)


class BulkValidation:
    def __init__(self, validation):
        self.validation = validation

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = req.get_param_as_int("limit", min_value=1, max_value=500) or 100
        resp.media = self.validation.jobs(req.context.principal.account_id, limit=limit,
                                          pivot=req.get_param("pivot"), page=req.get_param("page"))

    def on_post_item(self, req: falcon.Request, resp: falcon.Response, list_id: str) -> None:
        _, files = read_form(req)
        uploads = files.get("file") or []
        if not uploads:
            raise ApiError(400, "file parameter is missing: upload the CSV as multipart field 'file'")
        resp.media = self.validation.create_job(req.context.principal.account_id, list_id, uploads[0].data)
        resp.status = falcon.HTTP_202

    def on_get_item(self, req: falcon.Request, resp: falcon.Response, list_id: str) -> None:
        resp.media = self.validation.job(req.context.principal.account_id, list_id)

    def on_delete_item(self, req: falcon.Request, resp: falcon.Response, list_id: str) -> None:
        resp.media = self.validation.delete_job(req.context.principal.account_id, list_id)


class ListValidation:
    """`/v3/lists/{address}/validate`: a mailing list's members validated as a bulk job (Mailgun's list
    validation), read and cancelled like one."""

    def __init__(self, lists, validation):
        self.lists = lists
        self.validation = validation

    def on_post(self, req: falcon.Request, resp: falcon.Response, address: str) -> None:
        account_id = req.context.principal.account_id
        members = self.lists.member_addresses(account_id, address)  # an unknown list: 404
        resp.media = self.validation.create_list_job(account_id, address.strip().lower(), members)
        resp.status = falcon.HTTP_202

    def on_get(self, req: falcon.Request, resp: falcon.Response, address: str) -> None:
        resp.media = self.validation.job(req.context.principal.account_id, address.strip().lower())

    def on_delete(self, req: falcon.Request, resp: falcon.Response, address: str) -> None:
        resp.media = self.validation.delete_job(req.context.principal.account_id, address.strip().lower())


class ValidationDownload:
    """A job's results by the signed link in its `download_url` (no API key, like Mailgun's links)."""

    auth = PUBLIC

    def __init__(self, validation):
        self.validation = validation

    def on_get(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        fmt, rows = self.validation.results(token)
        resp.set_header("Cache-Control", "no-store")
        if fmt == "csv":
            resp.content_type = "text/csv; charset=utf-8"
            resp.stream = csv_lines(rows)
        else:
            resp.content_type = "application/json"
            resp.stream = _json_array(rows)


def _json_array(rows):
    yield b"["
    for n, row in enumerate(rows):
        yield (b"," if n else b"") + json.dumps(row).encode()
    yield b"]"
