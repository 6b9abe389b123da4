"""The dev sink's web pages: a mail catcher (list with search, message view, downloads).

Stdlib only (envoi.dev may not use the dashboard's template engine): pages are f-strings in which every
value goes through html.escape. The pages load their CSS and JS from the sink itself (sink_static/), so
their Content-Security-Policy allows no inline style or script.

A message's HTML part is never put in a page: the view embeds ``<iframe sandbox>`` whose source,
/view/{id}/html, is served with a CSP that sandboxes it again, runs no script, and loads no remote
resource unless asked (``?images=1`` allows remote images).
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser, HeaderParser
from pathlib import Path
from typing import Any

# connect-src: the list's "new mail" notice asks the sink's JSON API (sink_static/sink.js).
PAGE_CSP = ("default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
            "frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
MAIL_HTML_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
MAIL_HTML_IMAGES_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data: https: http:"
DOWNLOAD_CSP = "sandbox; default-src 'none'"  # should a browser show a download inline anyway

_STATIC_DIR = Path(__file__).with_name("sink_static")
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
LIST_LIMIT = 200

e = html.escape


def static_file(name: str) -> tuple[bytes, str] | None:
    """(body, content type) of one of the pages' static files, or None."""
    path = _STATIC_DIR / name
    if "/" in name or path.suffix not in _STATIC_TYPES or not path.is_file():
        return None
    return path.read_bytes(), _STATIC_TYPES[path.suffix]


# -- the list ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """What the list shows of a message, from its header block only (bodies may be megabytes)."""

    sender: str
    recipients: str
    subject: str
    size: int
    named: str  # From: and To: as written, searched too

    @classmethod
    def of(cls, msg: dict[str, Any]) -> Summary:
        head = msg["data"].partition("\r\n\r\n")[0]
        try:
            headers = HeaderParser(policy=policy.default).parsestr(head)
            sender, to, subject = (str(headers.get(name, "")) for name in ("from", "to", "subject"))
        except Exception:  # a malformed header must not break the page
            sender = to = subject = ""
        if not msg["mail_from"]:  # a bounce or DSN: say so, whatever its From: says
            sender = f"{sender} (envelope: <>)" if sender else "<>"
        # The envelope says who really got it (Bcc included); To: only who was named.
        return cls(sender=sender or msg["mail_from"], recipients=", ".join(msg["rcpt_tos"]), subject=subject,
                   size=len(msg["data"].encode("utf-8", "surrogateescape")), named=f"{msg['mail_from']} {to}")

    def matches(self, query: str) -> bool:
        query = query.casefold()
        return any(query in text.casefold() for text in (self.sender, self.recipients, self.subject, self.named))


def list_page(stored: list[dict[str, Any]], summaries: dict[int, Summary], query: str) -> bytes:
    """The list page over the stored messages (oldest first); `summaries` caches Summary by message id."""
    matches = []
    for msg in reversed(stored):  # newest first
        summary = summaries.get(msg["id"])
        if summary is None:
            summary = summaries[msg["id"]] = Summary.of(msg)
        if not query or summary.matches(query):
            matches.append((msg, summary))
            if len(matches) == LIST_LIMIT:
                break
    if len(summaries) > 2 * len(stored) + 100:  # forget messages deleted or pushed out since
        keep = {m["id"] for m in stored}
        for msg_id in [k for k in summaries if k not in keep]:
            summaries.pop(msg_id, None)
    return render_list(matches, query=query, stored=len(stored), latest_id=stored[-1]["id"] if stored else 0)


def render_list(messages: list[tuple[dict[str, Any], Summary]], *, query: str, stored: int,
                latest_id: int) -> bytes:
    """The list page; `messages` are the matches, newest first, at most LIST_LIMIT of them."""
    rows = "".join(
        f"<tr><td>{e(s.sender)}</td><td>{e(s.recipients)}</td>"
        f"<td><a href=\"/view/{m['id']}\">{e(s.subject) or '<em>(no subject)</em>'}</a></td>"
        f"<td class=\"num\">{e(_size(s.size))}</td><td class=\"when\">{_time(m['received_at'])}</td></tr>"
        for m, s in messages)
    if query:
        shown = f"{len(messages)} matching “{e(query)}” (<a href=\"/\">show all</a>)"
    else:
        shown = f"{stored} message{'' if stored == 1 else 's'}"
        if stored > len(messages):
            shown += f", the latest {len(messages)} shown"
    table = (f"<table><thead><tr><th scope=\"col\">From</th><th scope=\"col\">To</th>"
             f"<th scope=\"col\">Subject</th><th scope=\"col\">Size</th><th scope=\"col\">Received</th>"
             f"</tr></thead><tbody>{rows}</tbody></table>") if messages else "<p>No messages.</p>"
    body = f"""<header><h1>Envoi sink</h1><span class="muted">every message this dev region sent</span></header>
<div class="toolbar">
<form method="get" action="/" role="search"><label for="q">Search</label>
<input type="search" id="q" name="q" value="{e(query)}" placeholder="from, to or subject">
<button type="submit">Search</button></form>
<form method="post" action="/delete-all" data-confirm="Delete all messages?">
<button type="submit" class="danger">Delete all</button></form>
<span class="muted">{shown}</span>
<span id="new-mail" role="status" data-latest-id="{latest_id}"></span>
<a href="/messages">JSON</a> <a href="/stats">stats</a>
</div>
<main>{table}</main>"""
    return _page("Envoi sink", body)


# -- one message ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    payload: bytes


@dataclass(frozen=True)
class Mail:
    """A stored message taken apart for the view: decoded headers, body parts and attachments."""

    headers: list[tuple[str, str]]
    subject: str
    text: str | None
    html: str | None
    attachments: list[Attachment]

    @classmethod
    def parse(cls, raw: bytes) -> Mail:
        msg = BytesParser(policy=policy.default).parsebytes(raw)
        headers = []
        for name, value in msg.raw_items():
            try:
                headers.append((name, str(msg.policy.header_fetch_parse(name, value))))
            except Exception:  # undecodable: show it as received
                headers.append((name, value))
        text_part, html_part = msg.get_body(("plain",)), msg.get_body(("html",))
        attachments = [Attachment(_filename(part, n), part.get_content_type(), _payload(part))
                       for n, part in enumerate(p for p in _leaves(msg) if p is not text_part and p is not html_part)]
        subject = next((v for k, v in headers if k.lower() == "subject"), "")
        return cls(headers=headers, subject=subject, text=_text(text_part), html=_text(html_part),
                   attachments=attachments)


def _leaves(part: EmailMessage):
    """The parts that are not containers; an attached message (message/rfc822) is one part."""
    if part.is_multipart() and part.get_content_maintype() == "multipart":
        for sub in part.iter_parts():
            yield from _leaves(sub)
    else:
        yield part


def _payload(part: EmailMessage) -> bytes:
    if part.is_multipart():  # message/rfc822 and the like: the enclosed message as it was
        return b"".join(m.as_bytes() for m in part.iter_parts())
    return part.get_payload(decode=True) or b""


def _text(part: EmailMessage | None) -> str | None:
    if part is None:
        return None
    try:
        return part.get_content()
    except Exception:  # unknown charset or broken encoding: show what can be shown
        return _payload(part).decode("utf-8", "replace")


def _filename(part: EmailMessage, n: int) -> str:
    try:
        name = part.get_filename()
    except Exception:
        name = None
    return name or f"part-{n + 1}{_EXTENSIONS.get(part.get_content_type(), '.bin')}"


_EXTENSIONS = {"text/plain": ".txt", "text/html": ".html", "message/rfc822": ".eml", "text/calendar": ".ics"}


def render_view(msg: dict[str, Any], mail: Mail, *, images: bool) -> bytes:
    mid = msg["id"]
    subject = mail.subject or "(no subject)"
    headers = "".join(f"<tr><th scope=\"row\">{e(k)}</th><td>{e(v)}</td></tr>" for k, v in mail.headers)
    envelope = [("MAIL FROM", msg["mail_from"] or "<>"), ("RCPT TO", ", ".join(msg["rcpt_tos"])),
                ("Client", f"{msg['peer']} (HELO {msg['helo']})" + (", TLS" if msg["tls"] else "")),
                ("Received", _time(msg["received_at"], plain=True))]
    envelope_rows = "".join(f"<tr><th scope=\"row\">{e(k)}</th><td>{e(v)}</td></tr>" for k, v in envelope)
    first = {k.lower(): v for k, v in reversed(mail.headers)}
    byline = " · ".join(f"<strong>{label}</strong> {e(first[name])}" for name, label in
                        (("from", "From"), ("to", "To"), ("cc", "Cc"), ("date", "Date")) if first.get(name))
    sections = []
    if mail.attachments:
        items = "".join(
            f"<li><a href=\"/view/{mid}/attachments/{n}\" download>{e(a.filename)}</a> "
            f"<span class=\"muted\">{e(a.content_type)}, {e(_size(len(a.payload)))}</span></li>"
            for n, a in enumerate(mail.attachments))
        sections.append(f'<section aria-labelledby="h-att"><h2 id="h-att">Attachments</h2><ul>{items}</ul></section>')
    if mail.html is not None:
        if images:
            switch = f'Remote images are shown. <a href="/view/{mid}">Block remote images</a>'
        else:
            switch = f'Remote images are blocked. <a href="/view/{mid}?images=1">Load remote images</a>'
        src = f"/view/{mid}/html" + ("?images=1" if images else "")
        sections.append(f"""<section aria-labelledby="h-html"><h2 id="h-html">HTML</h2><p class="muted">{switch}</p>
<iframe class="mail-html" sandbox src="{src}" title="HTML part of the message"></iframe></section>""")
    if mail.text is not None:
        sections.append(f'<section aria-labelledby="h-text"><h2 id="h-text">Text</h2>'
                        f'<pre class="mail-text">{e(mail.text)}</pre></section>')
    body = f"""<header><a href="/">All messages</a><h1>{e(subject)}</h1></header>
<div class="toolbar"><a href="/view/{mid}/raw" download="message-{mid}.eml">Download raw</a>
<form method="post" action="/view/{mid}/delete" data-confirm="Delete this message?">
<button type="submit" class="danger">Delete</button></form></div>
<p class="byline">{byline}</p>
<main>
{''.join(sections)}
<section aria-labelledby="h-headers"><h2 id="h-headers">Headers</h2>
<table class="headers"><tbody>{headers}</tbody></table></section>
<section aria-labelledby="h-envelope"><h2 id="h-envelope">Envelope</h2>
<table class="headers"><tbody>{envelope_rows}</tbody></table></section>
</main>"""
    return _page(f"{subject} - Envoi sink", body)


def mail_html(mail: Mail) -> bytes:
    """The HTML part as the sandboxed iframe gets it (its CSP is MAIL_HTML_CSP)."""
    return (mail.html or "").encode("utf-8", "replace")


# -- shared -----------------------------------------------------------------------------------------


def _page(title: str, body: str) -> bytes:
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title><link rel="icon" href="data:,"><link rel="stylesheet" href="/static/sink.css"><script src="/static/sink.js" defer></script>
</head><body>
{body}
</body></html>
"""
    # Headers may carry undecodable bytes (surrogates); never fail the page for them.
    return page.encode("utf-8", "replace")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} kB"
    return f"{n / 1024 / 1024:.1f} MB"


def _time(ts: float, *, plain: bool = False) -> str:
    local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    if plain:
        return local
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    return f'<time datetime="{iso}">{e(local)}</time>'
