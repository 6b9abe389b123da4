"""A stored template on send: `template`, `t:version`, `t:text`, `t:variables` (HTTP) and the
X-Mailgun-Template-Name/-Version/-Variables headers (SMTP), rendered per recipient at accept.

The data a template sees, later sources winning: the message's custom variables (`v:` fields,
`h:X-Mailgun-Variables`), then `t:variables`, then, in a batch send, the recipient's own entry of
`recipient-variables`. String values may hold %recipient.KEY% placeholders (django-anymail sends its
merge_data so): they are filled in for each recipient first. A missing template or a rendering error
refuses the message at accept (400, SMTP 550): nothing that was accepted fails to render later.
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass
from email.message import EmailMessage

from envoi.mta import jsonvalues, substitution
from envoi.mta.compose import Composed, Draft
from envoi.mta.errors import InvalidMessage, MessageTooLarge
from envoi.mta.submission.headers import header_fields, split_head
from envoi.templates import render
from envoi.templates.service import Templates

SMTP_POLICY = email.policy.SMTP.clone(max_line_length=998)
YES = {"yes", "true", "1", "on"}
# Replaced by the rendered body over SMTP: the caller's own body structure goes with them.
_BODY_HEADERS = {b"content-type", b"content-transfer-encoding", b"mime-version"}


# A version's stored headers -> the send field each fills in when the message has none (Mailgun:
# the message's own headers win over the template's).
HEADER_FIELDS = {"from": "from", "subject": "subject", "reply-to": "h:Reply-To"}


@dataclass
class SendTemplate:
    source: str
    text: bool  # t:text=yes: render a text part too
    data: dict
    headers: dict | None = None  # the version's From/Subject/Reply-To, if it stores any
    name: str = ""
    version: str = ""

    def stamp(self, draft: Draft) -> Draft:
        """Name the template in the message's options: its events carry `template` {name, version}."""
        draft.options["template"] = {"name": self.name, "version": self.version}
        return draft

    def with_headers(self, fields: dict[str, list[str]]) -> dict[str, list[str]]:
        """The send fields with the version's headers filled in where the message gives none."""
        added = {HEADER_FIELDS[name.lower()]: [value] for name, value in (self.headers or {}).items()
                 if name.lower() in HEADER_FIELDS and value and not _last(fields, HEADER_FIELDS[name.lower()])}
        return {**fields, **added} if added else fields

    def data_for(self, sub: substitution.Substituter) -> dict:
        data = {k: sub.body(v) if isinstance(v, str) else v for k, v in self.data.items()}
        data.update(sub.variables)
        return data

    def bodies(self, sub: substitution.Substituter) -> tuple[str | None, str]:
        """(text or None, html) for one recipient's copy (placeholders in the output filled in too)."""
        html = sub.body(render.render(self.source, self.data_for(sub)))
        return (html if self.text else None), html


def _last(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[-1] if values else None


def _data(fields: dict[str, list[str]], user_variables: dict) -> dict:
    data = dict(user_variables)
    if (raw := _last(fields, "h:X-Mailgun-Variables")) is not None:
        data.update(jsonvalues.load_object(raw, "h:X-Mailgun-Variables"))
    if (raw := _last(fields, "t:variables")) is not None:
        data.update(jsonvalues.load_object(raw, "t:variables"))
    return data


def _v_fields(fields: dict[str, list[str]]) -> dict:
    out = {}
    for key, values in fields.items():
        if key.startswith("v:") and values:
            raw = values[-1]
            try:
                out[key[2:]] = jsonvalues.loads(raw, key) if raw[:1] in "{[" else raw
            except ValueError:
                out[key[2:]] = raw
    return out


class TemplateSending:
    """The send path's side of stored templates: the API's compose() gets a SendTemplate, intake runs
    render_submitted as a Renderer (SMTP). Templates (envoi.templates) only stores and renders."""

    def __init__(self, templates: Templates, max_bytes: int | None = None):
        self.templates = templates
        self.max_bytes = max_bytes  # the message size limit: SMTP's rendered copies are checked again

    def _source(self, domain: dict, name: str, tag: str | None) -> dict:
        found = self.templates.for_send(domain["account_id"], domain["id"], name, tag)
        if found is None:
            what = f"template '{name.strip()[:255]}'" + (f" version '{tag.strip()[:255]}'" if tag else "")
            raise InvalidMessage(f"{what} not found")
        return found

    def for_fields(self, domain: dict, fields: dict[str, list[str]]) -> SendTemplate | None:
        """The send API's template, looked up for the domain (None when the message names none)."""
        name = _last(fields, "template")
        if not name:
            return None
        if _last(fields, "html"):
            raise InvalidMessage("Cannot specify both 'html' and 'template' parameters")
        found = self._source(domain, name, _last(fields, "t:version"))
        text = (_last(fields, "t:text") or "").strip().lower() in YES
        return SendTemplate(found["template"], text, _data(fields, _v_fields(fields)), found["headers"],
                            found["name"], found["tag"])

    def render_submitted(self, domain: dict, draft: Draft) -> Draft:
        """Intake renderer for SMTP: a draft naming a template gets each copy's body rendered."""
        request = draft.template
        if request is None:
            return draft
        fields = request["fields"]
        found = self._source(domain, _last(fields, "template") or "", _last(fields, "t:version"))
        text = (_last(fields, "t:text") or "").strip().lower() in YES
        template = SendTemplate(found["template"], text, _data(fields, draft.user_variables), None,
                                found["name"], found["tag"])
        recipient_variables = request.get("recipient_variables")
        copies = []
        for copy in draft.copies:
            if recipient_variables is not None and len(copy.recipients) == 1:
                rcpt = copy.recipients[0]
                sub = substitution.Substituter(rcpt, recipient_variables.get(rcpt, {}))
            else:
                sub = substitution.Unchanged()
            copies.append(Composed(copy.recipients, _with_body(copy.mime, *template.bodies(sub)), copy.headers))
        size = sum(len(c.mime) for c in copies)
        if self.max_bytes is not None and size > self.max_bytes:
            raise MessageTooLarge(f"message size {size} bytes once the template is rendered exceeds the limit"
                                  f" of {self.max_bytes} bytes")
        draft.copies = copies
        draft.template = None
        return template.stamp(draft)


def _with_body(mime: bytes, text: str | None, html: str) -> bytes:
    """The message's own headers (but its body's) over a body of the rendered parts."""
    head, _ = split_head(mime)
    kept = [f for f in header_fields(head) if f.split(b":", 1)[0].strip().lower() not in _BODY_HEADERS]
    body = EmailMessage(policy=SMTP_POLICY)
    if text is not None:
        body.set_content(text)
        body.add_alternative(html, subtype="html")
    else:
        body.set_content(html, subtype="html")
    return b"".join(f + b"\r\n" for f in kept) + body.as_bytes(policy=SMTP_POLICY)
