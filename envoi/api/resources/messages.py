"""POST /v3/{domain}/messages and /messages.mime: the send API."""

from __future__ import annotations

import falcon

from envoi.api.errors import ApiError
from envoi.api.forms import read_form
from envoi.mta.compose import compose, from_mime, parse_addresses

QUEUED = "Queued. Thank you."


class Messages:
    sending_keys = True

    def __init__(self, intake):
        self.intake = intake

    def on_post(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        fields, files = read_form(req)
        domain_row = self.intake.domain_for(req.context.principal, domain)
        draft = compose(domain_row["name"], fields, files.get("attachment", []), files.get("inline", []))
        draft.method = "http"
        message_id = self.intake.accept(req.context.principal, domain_row, draft)
        resp.media = {"id": message_id, "message": QUEUED}

    def on_post_mime(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        fields, files = read_form(req)
        domain_row = self.intake.domain_for(req.context.principal, domain)
        uploads = files.get("message") or []
        if uploads:
            mime = uploads[0].data
        elif fields.get("message"):
            mime = fields["message"][-1].encode()
        else:
            raise ApiError(400, "message parameter is missing")
        if not fields.get("to"):
            raise ApiError(400, "to parameter is missing")
        recipients = [addr for _, addr in parse_addresses("to", fields["to"])]
        draft = from_mime(domain_row["name"], mime, recipients, fields, method="http")
        message_id = self.intake.accept(req.context.principal, domain_row, draft)
        resp.media = {"id": message_id, "message": QUEUED}
