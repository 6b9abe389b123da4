"""POST /v3/{domain}/messages and /messages.mime: the send API."""

from __future__ import annotations

import contextlib
import functools
import re
import threading

import falcon

from envoi.api import roles
from envoi.api.errors import ApiError, http_error
from envoi.api.forms import read_form
from envoi.api.scope import DomainScoped
from envoi.infra.errors import EnvoiError
from envoi.mta.compose import compose, from_mime, parse_addresses
from envoi.mta.errors import MessageTooLarge
from envoi.mta.stored_messages import attachment, parsed

QUEUED = "Queued. Thank you."
LARGE_BYTES = 4 * 1024 * 1024  # a request this large composes into several copies of tens of MB
LARGE_AT_ONCE = 2  # per worker process: bounds its memory (README "Limits")
LARGE_WAIT_SECONDS = 60.0


class LargeSlots:
    """At most LARGE_AT_ONCE large messages are composed and committed at once in this process; the
    others wait their turn (up to LARGE_WAIT_SECONDS, then 503). Small messages never wait."""

    def __init__(self, slots: int = LARGE_AT_ONCE, wait: float = LARGE_WAIT_SECONDS):
        self._slots = threading.BoundedSemaphore(slots)
        self._wait = wait

    @contextlib.contextmanager
    def hold(self, req: falcon.Request):
        if req.content_length is not None and req.content_length < LARGE_BYTES:
            yield
            return
        if not self._slots.acquire(timeout=self._wait):
            raise ApiError(503, "too many large messages are being accepted; retry shortly",
                           headers={"Retry-After": "10"})
        try:
            yield
        finally:
            self._slots.release()


class Messages:
    key_access = roles.SENDING

    def __init__(self, intake, list_expander=None, template_sending=None):
        self.intake = intake
        self.list_expander = list_expander  # a mailing list in `to`: one composed copy per member
        self.template_sending = template_sending  # envoi.mta.templated: `template` on send
        self.large = LargeSlots()

    def on_post(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        # A refusal is raised from here, not from inside: the traceback of an error raised in
        # compose() keeps its frames, and so the request's fields (up to 50 MB), alive in the thread.
        if (error := _refusal(self._post, req, resp, domain)) is not None:
            raise error

    def _post(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        if (req.content_type or "").lower().startswith("multipart/"):
            fields, files = read_form(req)  # uploads wait on disk: a slow upload holds no slot
            with self.large.hold(req):
                self._send(req, resp, domain, fields, files)
        else:
            with self.large.hold(req):  # an urlencoded body is in memory from the start
                self._send(req, resp, domain, *read_form(req))

    def _send(self, req: falcon.Request, resp: falcon.Response, domain: str, fields: dict, files: dict) -> None:
        domain_row = self.intake.domain_for(req.context.principal, domain)
        lists = (functools.partial(self.list_expander.expansions, domain_row)
                 if self.list_expander is not None else None)
        template = self.template_sending.for_fields(domain_row, fields) if self.template_sending else None
        if template is not None:
            fields = template.with_headers(fields)  # the version's From/Subject/Reply-To, where not given
        draft = compose(domain_row["name"], fields, files.get("attachment", []), files.get("inline", []),
                        max_bytes=self.intake.settings.max_message_bytes, lists=lists, template=template)
        if template is not None:
            template.stamp(draft)
        draft.method = "http"
        message_id = self.intake.accept(req.context.principal, domain_row, draft)
        resp.media = {"id": message_id, "message": QUEUED}

    def on_post_mime(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        if (error := _refusal(self._post_mime, req, resp, domain)) is not None:
            raise error

    def _post_mime(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        fields, files = read_form(req)
        domain_row = self.intake.domain_for(req.context.principal, domain)
        uploads = files.get("message") or []
        if not uploads and not fields.get("message"):
            raise ApiError(400, "message parameter is missing")
        if not fields.get("to"):
            raise ApiError(400, "to parameter is missing")
        if uploads and uploads[0].size > self.intake.settings.max_message_bytes:  # refused before it is read
            raise MessageTooLarge(f"message size {uploads[0].size} bytes exceeds the limit of "
                                  f"{self.intake.settings.max_message_bytes} bytes")
        recipients = [addr for _, addr in parse_addresses("to", fields["to"])]
        with self.large.hold(req):
            mime = uploads[0].data if uploads else fields["message"][-1].encode()
            draft = from_mime(domain_row["name"], mime, recipients, fields, method="http")
            message_id = self.intake.accept(req.context.principal, domain_row, draft)
        resp.media = {"id": message_id, "message": QUEUED}


def _refusal(handler, req: falcon.Request, *args) -> ApiError | None:
    """Run handler; return the API error for a refusal instead of letting it propagate."""
    try:
        handler(req, *args)
    except EnvoiError as ex:
        return http_error(req, ex)
    return None


class StoredMessage(DomainScoped):
    """/v3/domains/{d}/messages/{storage_key}: GET a stored message (while retention keeps it), POST to
    resend it (Mailgun's resend, `to` required), DELETE to cancel it while it waits (an Envoi extension)."""

    def __init__(self, accounts, storage, intake, routes):
        super().__init__(accounts)
        self.storage = storage
        self.intake = intake
        self.routes = routes  # messages received and kept by a route's store()

    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str, storage_key: str) -> None:
        domain_row = self.domain(req, domain)
        found = self.storage.get(domain_row["id"], storage_key)
        if found is None:
            self._received(req, resp, domain_row, storage_key)
            return
        row, mime = found
        if "message/rfc2822" in (req.get_header("Accept") or ""):
            resp.media = {"body-mime": mime.decode("utf-8", "replace"), "recipients": ",".join(row["recipients"])}
            return
        resp.media = parsed(row, mime)

    def _received(self, req: falcon.Request, resp: falcon.Response, domain_row: dict, storage_key: str) -> None:
        kept = self.routes.stored(domain_row, storage_key)
        if kept is None:
            raise ApiError(404, "Message not found")
        if "message/rfc2822" in (req.get_header("Accept") or ""):
            row, raw = kept
            resp.media = {"body-mime": raw.decode("utf-8", "replace"), "recipients": row["recipient"]}
            return
        resp.media = self.routes.stored_json(domain_row, storage_key)

    def on_get_attachment(self, req: falcon.Request, resp: falcon.Response, domain: str, storage_key: str,
                          index: str) -> None:
        """One attachment of a stored message (the `url` of its `attachments` entries), as a download."""
        domain_row = self.domain(req, domain)
        found = self.storage.get(domain_row["id"], storage_key) or self.routes.stored(domain_row, storage_key)
        part = attachment(found[1], int(index)) if found and index.isdigit() and len(index) < 6 else None
        if part is None:
            raise ApiError(404, "Attachment not found")
        name, _, data = part
        ascii_name = re.sub(r"[^A-Za-z0-9._ -]", "_", name or f"attachment-{index}")[:200] or "attachment"
        resp.content_type = "application/octet-stream"  # never rendered by a browser from our origin
        resp.set_header("Content-Disposition", f'attachment; filename="{ascii_name}"')
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.data = data

    def on_post(self, req: falcon.Request, resp: falcon.Response, domain: str, storage_key: str) -> None:
        fields, _ = read_form(req)
        if not fields.get("to"):
            raise ApiError(400, "to parameter is missing")
        domain_row = self.intake.domain_for(req.context.principal, domain)  # may it send (state, tenant)
        recipients = [addr for _, addr in parse_addresses("to", fields["to"])]
        draft = self.storage.resend_draft(domain_row, storage_key, recipients)
        message_id = self.intake.accept(req.context.principal, domain_row, draft)
        resp.media = {"id": message_id, "message": QUEUED}

    def on_delete(self, req: falcon.Request, resp: falcon.Response, domain: str, storage_key: str) -> None:
        cancelled = self.storage.cancel(self.domain(req, domain), storage_key)
        resp.media = {"message": "Message cancelled", "cancelled_recipients": cancelled}


class Envelopes(DomainScoped):
    """DELETE /v3/{d}/envelopes: Mailgun's "delete scheduled and undelivered mail" of the domain."""

    def __init__(self, accounts, storage):
        super().__init__(accounts)
        self.storage = storage

    def on_delete(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        cancelled = self.storage.cancel_queue(self.domain(req, domain))
        resp.media = {"message": "done", "cancelled_recipients": cancelled}


class SendingQueues(DomainScoped):
    """GET /v3/domains/{d}/sending_queues: Mailgun's queue status of a domain, as sending is right now.
    Both queues (regular and scheduled) are closed to new mail when the domain is disabled or its account
    may not send (suspended, restricted, closed): a send would be refused with the same reason."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str) -> None:
        row = self.domain(req, domain)
        reason = ""
        try:
            self.accounts.ensure_may_send(req.context.principal, row["name"])
        except EnvoiError as ex:
            reason = ex.message
        if not reason and row.get("state") == "disabled":
            reason = f"Domain {row['name']} is not allowed to send: domain is disabled"
        # No refusal of Envoi's ends at a known time: `until` stays empty (Mailgun's field, a date when set).
        queue = {"is_disabled": bool(reason), "disabled": {"until": "", "reason": reason}}
        resp.media = {"regular": queue, "scheduled": dict(queue)}
