"""Logs: the events search (every filter of GET /v3/{domain}/events, paged with the service's own
tokens), its live tail (the same SSE stream as /v3/events/live), and one message's page: the delivery
trace per recipient and, while the body is kept, its headers, text, HTML (sandboxed) and attachments."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

import falcon

from envoi.accounts.errors import NotFound
from envoi.api.auth import SESSION
from envoi.api.dashboard import security
from envoi.api.dashboard.pages.common import chosen_domain, done_notice
from envoi.api.dashboard.templating import render
from envoi.api.resources.events import LiveEvents
from envoi.api.scope import query_params
from envoi.events.errors import EventQueryError
from envoi.events.service import FILTER_FIELDS
from envoi.infra.errors import EnvoiError
from envoi.mta.errors import InvalidMessage
from envoi.mta.stored_messages import attachment, parsed

#: The search form's own parameters besides the filters (the API's names).
OPTIONS = ("begin", "end", "ascending", "limit")
#: Event types offered in the form's suggestions (any filter expression is accepted).
EVENT_TYPES = ("accepted", "delivered", "failed", "opened", "clicked", "unsubscribed", "complained",
               "stored", "rejected")
LOCAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?")


@dataclass(frozen=True)
class Row:
    """One event as a line of the table."""
    id: str
    time: float
    event: str
    severity: str
    recipient: str
    subject: str
    sender: str
    code: str
    reason: str
    tags: list
    link: str | None


def message_path(domain: str, message_id: str) -> str:
    return f"/dashboard/domains/{quote(domain, safe='')}/messages/{quote(message_id.strip('<>'), safe='@+')}"


def row_of(domain: str, data: dict) -> Row:
    message = data.get("message") or {}
    headers = message.get("headers") or {}
    status = data.get("delivery-status") or {}
    message_id = (headers.get("message-id") or "").strip("<>")
    code = status.get("code")
    reason = data.get("reason") or status.get("description") or status.get("message") or ""
    return Row(id=data.get("id") or "", time=data.get("timestamp") or 0, event=data.get("event") or "",
               severity=data.get("severity") or "", recipient=data.get("recipient") or "",
               subject=headers.get("subject") or "", sender=headers.get("from") or "",
               code="" if code in (None, "") else str(code), reason=str(reason), tags=list(data.get("tags") or []),
               link=message_path(domain, message_id) if message_id else None)


def local_to_epoch(value: str) -> str:
    """A datetime-local input's value (read as UTC) as the API's epoch seconds; any other text is left
    for the service to read (RFC 2822 or epoch seconds), so a bad date gets the API's own message."""
    value = value.strip()
    if LOCAL_TIME.fullmatch(value):
        try:
            return str(datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp())
        except ValueError:
            pass  # e.g. month 13: the service says what is wrong
    return value


def search_params(req: falcon.Request) -> dict[str, list[str]]:
    """The request's filters and options as the events service takes them (begin/end made epochs);
    empty boxes mean no filter."""
    given = query_params(req)
    out = {}
    for name in (*FILTER_FIELDS, *OPTIONS):
        values = [v for v in given.get(name, []) if v.strip()]
        if values:
            out[name] = [local_to_epoch(v) for v in values] if name in ("begin", "end") else values
    return out


def form_values(req: falcon.Request) -> dict[str, str]:
    """What the form boxes show: the last value of each parameter as typed."""
    given = query_params(req)
    return {name: (given.get(name) or [""])[-1] for name in (*FILTER_FIELDS, *OPTIONS)}


def _token(url: str) -> str:
    """The paging token at the end of one of the service's paging URLs (…/v3/{domain}/events/{token})."""
    return url.rsplit("/", 1)[1]


class Logs:
    """/dashboard/logs?domain=&<filters>&page=<token>"""
    auth, reads = SESSION, "read_logs"

    def __init__(self, accounts, events):
        self.accounts = accounts
        self.events = events

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        names, domain = chosen_domain(self.accounts, req)
        values = form_values(req)
        context = dict(domains=names, domain=domain["name"] if domain else "", values=values,
                       filter_fields=FILTER_FIELDS, event_types=EVENT_TYPES, rows=[], pager={}, error=None,
                       paged=False, live_url="")
        if domain is None:
            render(req, resp, "logs.html", **context)
            return
        params = search_params(req)
        live = {"domain": domain["name"], **{k: v for k, v in params.items() if k in FILTER_FIELDS}}
        context["live_url"] = "/dashboard/logs/live?" + urlencode(live, doseq=True)
        token = req.get_param("page")
        try:
            result = self.events.page(domain, token) if token else self.events.search(domain, params)
        except EventQueryError as ex:
            render(req, resp, "logs.html", status=400, **dict(context, error=ex.message, live_url=""))
            return
        # Page links keep the form's boxes filled; the token alone decides what the page holds.
        keep = {"domain": domain["name"], **{k: v for k, v in query_params(req).items()
                                             if k in (*FILTER_FIELDS, *OPTIONS)}}
        pager = {name: "/dashboard/logs?" + urlencode({**keep, "page": _token(url)}, doseq=True)
                 for name, url in result["paging"].items()}
        render(req, resp, "logs.html", **dict(context, rows=[row_of(domain["name"], d) for d in result["items"]],
                                              pager=pager, paged=bool(token)))


class LiveTail(LiveEvents):
    """/dashboard/logs/live?domain=&<filters>: the account's live stream (one domain, or all of them
    when no domain is named) for the logs page's EventSource, exactly as /v3/events/live serves it:
    same filters, Last-Event-ID resume, the stream's maximum duration and the server's client cap."""
    auth, reads = SESSION, "read_logs"
    options = (*LiveEvents.options, "domain")  # the page names its domain in the query

    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str | None = None) -> None:
        super().on_get(req, resp, (req.get_param("domain") or "").strip() or None)


class _MessageBase:
    auth, reads = SESSION, "read_logs"

    def __init__(self, accounts, events, storage, intake):
        self.accounts = accounts
        self.events = events
        self.storage = storage
        self.intake = intake

    def trace(self, req: falcon.Request, domain: str, message_id: str) -> tuple[dict, dict]:
        """(domain row, trace); another account's domain or an unknown message is a 404."""
        row = self.accounts.get_domain(domain, req.context.user.account_id)
        trace = self.events.trace(row, message_id)
        if trace is None:
            raise NotFound("Message not found")
        return row, trace

    def stored(self, domain: dict, trace: dict) -> tuple[dict, bytes] | None:
        """(stored row, MIME) while the body is kept, else None."""
        key = (trace.get("storage") or {}).get("key")
        return self.storage.get(domain["id"], key) if key else None


class Message(_MessageBase):
    """/dashboard/domains/{domain}/messages/{message_id}, and its actions: .../resend (the stored message
    again, to the recipients given: Mailgun's resend) and .../cancel (what still waits: scheduled or
    retrying recipients), through the same services as the API's POST / DELETE on the storage URL."""
    writes = "send"
    DONE = {"resent": "Resent: this is the new message.", "cancelled": "What was still waiting is cancelled."}

    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str, message_id: str) -> None:
        self.show(req, resp, domain, message_id)

    def show(self, req: falcon.Request, resp: falcon.Response, domain: str, message_id: str, *,
             error: str | None = None, status: int = 200) -> None:
        row, trace = self.trace(req, domain, message_id)
        found = self.stored(row, trace)
        body = parsed(*found) if found else None
        base = message_path(row["name"], trace["message-id"])
        images = req.get_param_as_bool("images") or False
        waiting = any(r["status"] == "queued" for r in trace["recipients"])
        render(req, resp, "message.html", status=status, domain=row["name"], trace=trace, body=body, base=base,
               images=images, html_src=base + "/html" + ("?images=1" if images else ""), waiting=waiting,
               stored=found is not None, error=error, notice=done_notice(req, self.DONE),
               may_send=req.context.user.may("send"))

    def on_post_resend(self, req: falcon.Request, resp: falcon.Response, domain: str, message_id: str) -> None:
        row, trace = self.trace(req, domain, message_id)
        key = (trace.get("storage") or {}).get("key")
        to = [a.strip() for a in (req.context.form.get("to") or "").replace(";", ",").split(",") if a.strip()]
        try:
            if not key:
                raise NotFound("The message's body is no longer kept, so it cannot be resent")
            if not to:
                raise InvalidMessage("Give at least one recipient")
            principal = self.accounts.principal_of_user(req.context.user.account_id)
            sending = self.intake.domain_for(principal, row["name"])
            new_id = self.intake.accept(principal, sending, self.storage.resend_draft(sending, key, to))
        except EnvoiError as ex:
            self.show(req, resp, domain, message_id, error=ex.message, status=ex.http_status)
            return
        raise falcon.HTTPSeeOther(message_path(row["name"], new_id) + "?done=resent")

    def on_post_cancel(self, req: falcon.Request, resp: falcon.Response, domain: str, message_id: str) -> None:
        row, trace = self.trace(req, domain, message_id)
        key = (trace.get("storage") or {}).get("key")
        try:
            if not key:
                raise NotFound("Message not found")
            self.storage.cancel(row, key)
        except EnvoiError as ex:
            self.show(req, resp, domain, message_id, error=ex.message, status=ex.http_status)
            return
        raise falcon.HTTPSeeOther(message_path(row["name"], trace["message-id"]) + "?done=cancelled")


class MessageHtml(_MessageBase):
    """/dashboard/domains/{domain}/messages/{message_id}/html: the message's HTML alone, under a CSP
    sandbox (no script, opaque origin, no network but inline images unless ?images=1), for the message
    page's sandboxed iframe."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str, message_id: str) -> None:
        row, trace = self.trace(req, domain, message_id)
        found = self.stored(row, trace)
        if found is None:
            raise NotFound("The message's body is no longer kept")
        html = parsed(*found)["body-html"]
        images = req.get_param_as_bool("images") or False
        req.context.content_policy = security.MAIL_HTML_POLICY_IMAGES if images else security.MAIL_HTML_POLICY
        resp.content_type = "text/html; charset=utf-8"
        resp.text = html


class MessageAttachment(_MessageBase):
    """/dashboard/domains/{domain}/messages/{message_id}/attachments/{index}: a download, never shown
    inline (Content-Disposition: attachment, nosniff)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, domain: str, message_id: str, index: str) -> None:
        row, trace = self.trace(req, domain, message_id)
        found = self.stored(row, trace)
        part = attachment(found[1], int(index)) if found and index.isdigit() and len(index) < 6 else None
        if part is None:
            raise NotFound("Attachment not found")
        name, _, data = part
        resp.content_type = "application/octet-stream"
        resp.set_header("Content-Disposition", _disposition(name or f"attachment-{index}"))
        resp.data = data


def _disposition(name: str) -> str:
    """attachment; with an ASCII fallback name and the UTF-8 one (RFC 6266); no header injection."""
    ascii_name = re.sub(r'[^A-Za-z0-9._ -]', "_", name)[:200] or "attachment"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name[:200], safe='')}"
