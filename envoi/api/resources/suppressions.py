"""Suppression lists: /v3/{domain}/bounces|unsubscribes|complaints|whitelists (Mailgun shapes)."""

from __future__ import annotations

import falcon

from envoi.api.errors import ApiError
from envoi.api.forms import read_form
from envoi.api.params import check_json
from envoi.api.scope import DomainScoped


class SuppressionList(DomainScoped):
    def __init__(self, accounts, suppressions, kind: str):
        super().__init__(accounts)
        self.suppressions = suppressions
        self.kind = kind

    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        params = {k: req.get_param(k) for k in ("limit", "page", "address", "term") if req.get_param(k) is not None}
        resp.media = self.suppressions.page(self.domain(req, domain), self.kind, params)

    def on_post(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        row = self.domain(req, domain)
        if (req.content_type or "").lower().startswith("application/json"):
            try:
                entries = req.get_media()
            except falcon.MediaMalformedError as ex:
                raise ApiError(400, "request body is not valid JSON") from ex
            check_json(entries)
            resp.media = self.suppressions.add_batch(row, self.kind, entries)
            return
        fields, _ = read_form(req)
        for name in ("tag", "tags", "tags[]"):
            if name in fields:
                fields[name] = [t for t in fields[name] if t.strip()]
        if "tags[]" in fields:
            fields["tags"] = fields.pop("tags[]")
        resp.media = self.suppressions.add(row, self.kind, fields)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        resp.media = self.suppressions.clear(self.domain(req, domain), self.kind)

    # /{kind}/{address}
    def on_get_item(self, req: falcon.Request, resp: falcon.Response, domain: str, address: str) -> None:
        resp.media = self.suppressions.get(self.domain(req, domain), self.kind, address)

    def on_delete_item(self, req: falcon.Request, resp: falcon.Response, domain: str, address: str) -> None:
        resp.media = self.suppressions.delete(self.domain(req, domain), self.kind, address, req.get_param("tag"))

    # /{kind}/import
    def on_post_import(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        row = self.domain(req, domain)
        _, files = read_form(req)
        uploads = files.get("file") or []
        if not uploads:
            raise ApiError(400, "file parameter is missing: upload the CSV as multipart field 'file'")
        resp.media = self.suppressions.import_csv(row, self.kind, uploads[0].data)
