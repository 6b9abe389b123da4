"""Open/click/unsubscribe tracking: per-domain settings, signed tokens, rendering, and recording hits.

Rendering is an intake renderer: before a message is stored, its HTML links are rewritten to signed
click URLs, an open pixel is added, `%unsubscribe_url%` / `%tag_unsubscribe_url%` are substituted, the
domain's unsubscribe footer is appended, and `List-Unsubscribe` (https + mailto) with
`List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058) is added to the header, so the relay's
DKIM signature covers both. Tracking URLs are per recipient, so a copy addressed to several
recipients is split into one copy per recipient (as batch sends are).

Tokens are opaque: base64url(version + nonce + AES-GCM-SIV(payload)) under a key derived from the
region's secret key, with the kind (o/c/u) as associated data. The payload binds account, domain,
Message-ID, recipient and (clicks) the target URL, so a tampered, foreign or re-targeted token fails
authentication and gets a 4xx (the click endpoint only ever redirects to a URL this system sealed),
and no address or URL can be read from a link.
"""

from __future__ import annotations

import base64
import email.policy
import hashlib
import hmac
import html
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import replace
from email.parser import BytesParser
from urllib.parse import quote, urlsplit

import user_agents
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from envoi.events.service import Events, NewEvent, item
from envoi.infra.cache import TTLCache
from envoi.infra.db import Connection, Database
from envoi.mta.compose import SMTP_POLICY, Composed, Draft
from envoi.mta.errors import TrackingSettingsError

KINDS = {"o": "opened", "c": "clicked", "u": "unsubscribed", "l": "unsubscribed"}  # l: from a mailing list
HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.I | re.S)
TEXT_URL = re.compile(r"""https?://[^\s<>"'\])]+""")
PLACEHOLDERS = ("%unsubscribe_url%", "%tag_unsubscribe_url%")
DEFAULT_HTML_FOOTER = '<p style="font-size:small">To unsubscribe click: <a href="%unsubscribe_url%">here</a></p>'
DEFAULT_TEXT_FOOTER = "\n\nTo unsubscribe click: <%unsubscribe_url%>\n"
PARSE_POLICY = email.policy.default.clone(linesep="\r\n")
TOKEN_VERSION = b"\x02"


class InvalidToken(ValueError):
    """A tracking token that cannot be honoured: forged, or ours but for something gone or unusable."""


class ForgedToken(InvalidToken):
    """A token that fails authentication: malformed, tampered with, another kind's, or not ours."""


#: Account states whose tracking links neither record nor redirect (docs/account-state.md).
NOT_PROCESSING = ("restricted", "closed")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def client_info(user_agent: str) -> dict:
    ua = user_agents.parse(user_agent or "")
    lowered = (user_agent or "").lower()
    bot = ""
    if "googleimageproxy" in lowered:
        bot = "gmail"
    elif ua.is_bot:
        bot = "generic"
    if ua.is_bot:
        client_type = "robot"
    elif ua.is_email_client:
        client_type = "email client"
    elif ua.is_mobile or ua.is_tablet:
        client_type = "mobile browser"
    elif ua.browser.family != "Other":
        client_type = "browser"
    else:
        client_type = "unknown"
    device = "mobile" if ua.is_mobile else "tablet" if ua.is_tablet else "desktop" if ua.is_pc else "unknown"
    return {"client-type": client_type, "client-os": ua.os.family, "device-type": device,
            "client-name": ua.browser.family, "user-agent": user_agent or "", "bot": bot}


class Tracking:
    def __init__(self, db: Database, events: Events, secret_key: bytes, public_url: str, suppressions=None,
                 previous_keys: Sequence[bytes] = (), lists=None):
        self.db = db
        self.lists = lists  # envoi.lists.service.MailingLists: a list unsubscribe ("l") marks its member
        self.events = events
        self.public_url = public_url.rstrip("/")
        self.suppressions = suppressions
        # Tokens are made under the current key; those in mail sent before a key rotation still verify
        # while their key is listed among the previous ones (ENVOI_PREVIOUS_SECRET_KEYS).
        self._aeads = [AESGCMSIV(hmac.new(key, b"envoi:tracking-token:v2", hashlib.sha256).digest())
                       for key in (secret_key, *previous_keys)]
        self._aead = self._aeads[0]
        self._settings_cache = TTLCache(ttl=5.0)

    # settings ---------------------------------------------------------------------------------
    def settings_for(self, domain_id: int, conn: Connection | None = None) -> dict:
        if conn is None:
            # PERF: read on every accepted message; cached briefly, dropped on update_settings.
            return self._settings_cache.get(domain_id, lambda: self._settings_for(domain_id, None))
        return self._settings_for(domain_id, conn)

    def _settings_for(self, domain_id: int, conn: Connection | None) -> dict:
        def read(c):
            return c.execute("SELECT * FROM tracking_settings WHERE domain_id = %s", (domain_id,)).fetchone()

        if conn is not None:
            row = read(conn)
        else:
            with self.db.transaction() as c:
                row = read(c)
        return row or {"domain_id": domain_id, "open": False, "click": "no", "unsubscribe": False,
                       "html_footer": "", "text_footer": ""}

    def settings_json(self, domain: dict) -> dict:
        s = self.settings_for(domain["id"])
        click = s["click"]
        return {"tracking": {
            "open": {"active": s["open"]},
            "click": {"active": "htmlonly" if click == "htmlonly" else click == "yes"},
            "unsubscribe": {"active": s["unsubscribe"], "html_footer": s["html_footer"] or DEFAULT_HTML_FOOTER,
                            "text_footer": s["text_footer"] or DEFAULT_TEXT_FOOTER},
        }}

    def update_settings(self, domain: dict, kind: str, fields: dict[str, str]) -> dict:
        if kind not in ("open", "click", "unsubscribe"):
            raise TrackingSettingsError("tracking type must be open, click or unsubscribe")
        raw = (fields.get("active") or "").strip().lower()
        if raw in ("yes", "true", "1", "on"):
            active = "yes"
        elif raw in ("no", "false", "0", "off"):
            active = "no"
        elif raw == "htmlonly" and kind == "click":
            active = "htmlonly"
        else:
            raise TrackingSettingsError("active must be yes or no" + (" or htmlonly" if kind == "click" else ""))
        columns: dict = {}
        if kind == "open":
            columns["open"] = active == "yes"
        elif kind == "click":
            columns["click"] = active
        else:
            columns["unsubscribe"] = active == "yes"
            for name in ("html_footer", "text_footer"):
                if name in fields:
                    if len(fields[name]) > 10_000:
                        raise TrackingSettingsError(f"{name} is too long")
                    columns[name] = fields[name]
        names = list(columns)
        with self.db.transaction() as conn:
            conn.execute(
                f"INSERT INTO tracking_settings (domain_id, {', '.join(names)}) VALUES (%s, {', '.join(['%s'] * len(names))})"
                f" ON CONFLICT (domain_id) DO UPDATE SET {', '.join(f'{n} = EXCLUDED.{n}' for n in names)},"
                " updated_at = now()", [domain["id"], *columns.values()])
        self._settings_cache.forget(domain["id"])
        current = self.settings_json(domain)["tracking"][kind]
        return {"message": "Domain tracking settings have been updated", kind: current}

    # tokens -----------------------------------------------------------------------------------
    def sign(self, kind: str, account_id: int, domain_id: int, message_id: str, recipient: str, extra=None) -> str:
        """An opaque, authenticated token: AES-GCM-SIV over the payload, the kind bound as associated data."""
        payload = json.dumps([account_id, domain_id, message_id, recipient, extra], separators=(",", ":")).encode()
        nonce = os.urandom(12)  # SIV: a repeated nonce would leak only equality, never the key stream
        return _b64(TOKEN_VERSION + nonce + self._aead.encrypt(nonce, payload, b"envoi-tracking:" + kind.encode()))

    def verify(self, kind: str, token: str) -> dict:
        try:
            raw = _unb64(token)
            if raw[:1] != TOKEN_VERSION or len(raw) < 1 + 12 + 16:
                raise ForgedToken("unknown token version")
            payload = self._open(raw, b"envoi-tracking:" + kind.encode())
            account_id, domain_id, message_id, recipient, extra = json.loads(payload)
        except ForgedToken:
            raise
        except Exception as ex:  # bad base64, wrong key, tampered, or another kind's token
            raise ForgedToken("invalid token") from ex
        return {"account_id": account_id, "domain_id": domain_id, "message_id": message_id,
                "recipient": recipient, "extra": extra}

    def _open(self, raw: bytes, associated: bytes) -> bytes:
        for aead in self._aeads[:-1]:
            try:
                return aead.decrypt(raw[1:13], raw[13:], associated)
            except InvalidTag:
                continue
        return self._aeads[-1].decrypt(raw[1:13], raw[13:], associated)

    def url(self, kind: str, token: str) -> str:
        return f"{self.public_url}/{kind}/{token}"

    def list_unsubscribe_url(self, account_id: int, domain_id: int, message_id: str, member: str,
                             list_address: str) -> str:
        """%mailing_list_unsubscribe_url%: unsubscribes this member from this list only (not the domain)."""
        return self.url("l", self.sign("l", account_id, domain_id, message_id, member, list_address))

    # rendering (an intake renderer) -----------------------------------------------------------
    def render(self, domain: dict, draft: Draft) -> Draft:
        options = draft.options or {}
        settings = None

        def domain_settings():
            nonlocal settings
            if settings is None:
                settings = self.settings_for(domain["id"])
            return settings

        opens = options.get("tracking_opens", options.get("tracking"))
        clicks = options.get("tracking_clicks", options.get("tracking"))
        if opens is None:
            opens = domain_settings()["open"]
        if clicks is None:
            clicks = domain_settings()["click"]
        clicks = "htmlonly" if clicks == "htmlonly" else "yes" if clicks in (True, "yes") else "no"
        footer = bool(domain_settings()["unsubscribe"])
        if not (opens or clicks != "no" or footer) and not any(
            b"%unsub" in c.mime or b"be_url%" in c.mime for c in draft.copies
        ):
            return draft  # nothing to track and no placeholder: the message is stored as composed
        copies: list[Composed] = []
        for copy in draft.copies:
            # Parse once per copy; per recipient only the text parts are re-encoded.
            msg = BytesParser(policy=PARSE_POLICY).parsebytes(copy.mime)
            parts = _text_parts(msg)
            theirs = "List-Unsubscribe" in msg  # a caller-set header is kept as it is
            for rcpt in copy.recipients:
                mime = self._render_one(domain, draft, msg, parts, theirs, rcpt, opens=bool(opens), clicks=clicks,
                                        footer=footer, settings=domain_settings() if footer else None)
                copies.append(Composed([rcpt], mime, copy.headers))
        return replace(draft, copies=copies)

    def _render_one(self, domain: dict, draft: Draft, msg, parts: list, theirs: bool, rcpt: str, *, opens: bool,
                    clicks: str, footer: bool, settings: dict | None) -> bytes:
        ids = (domain["account_id"], domain["id"], draft.message_id, rcpt)
        unsub_all = self.url("u", self.sign("u", *ids, ["*"]))
        unsub_tag = self.url("u", self.sign("u", *ids, sorted(draft.tags))) if draft.tags else unsub_all

        def substitute(text: str) -> str:
            return text.replace("%tag_unsubscribe_url%", unsub_tag).replace("%unsubscribe_url%", unsub_all)

        def click(url: str) -> str:
            parts = urlsplit(url)
            if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
                return url
            if url.startswith(self.public_url + "/"):
                return url  # our own (unsubscribe) links
            return self.url("c", self.sign("c", *ids, url))

        uses_placeholder = False
        for part, subtype, original, other, had_version in parts:
            text = original
            if any(p in text for p in PLACEHOLDERS):
                uses_placeholder = True
            if subtype == "html":
                if footer:
                    text = _before_body_end(text, settings["html_footer"] or DEFAULT_HTML_FOOTER)
                text = substitute(text)
                if clicks != "no":
                    text = HREF.sub(lambda m: m.group(1) + m.group(2) + html.escape(
                        click(html.unescape(m.group(3))), quote=True) + m.group(2), text)
                if opens:
                    pixel = (f'<img src="{html.escape(self.url("o", self.sign("o", *ids)))}" width="1" height="1"'
                             ' alt="" style="display:none !important" />')
                    text = _before_body_end(text, pixel)
            else:
                if footer:
                    text = text + (settings["text_footer"] or DEFAULT_TEXT_FOOTER)
                text = substitute(text)
                if clicks == "yes":
                    text = TEXT_URL.sub(lambda m: click(m.group(0)), text)
            if text != original:
                _set_text(part, text, subtype, other, had_version)
        if (footer or uses_placeholder) and not theirs:
            mailto = f"mailto:unsubscribe@{domain['name']}?subject={quote('unsubscribe ' + unsub_all.rsplit('/', 1)[1])}"
            del msg["List-Unsubscribe"], msg["List-Unsubscribe-Post"]
            msg["List-Unsubscribe"] = f"<{unsub_all}>, <{mailto}>"
            msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        return msg.as_bytes(policy=SMTP_POLICY)

    def processing(self, account_id: int) -> bool:
        """Whether the account's links still work: not once it is closed or its processing restricted."""
        with self.db.transaction() as conn:
            row = conn.execute("SELECT state FROM accounts WHERE id = %s", (account_id,)).fetchone()
        return row is not None and row["state"] not in NOT_PROCESSING

    # hits -------------------------------------------------------------------------------------
    def hit(self, kind: str, token: str, *, user_agent: str = "", ip: str | None = None) -> dict:
        """Record an open ('o'), click ('c') or unsubscribe ('u'); return the verified payload.

        The unsubscribe lands in the suppression list in the same transaction as its event, before
        the caller answers.
        """
        data = self.verify(kind, token)
        if kind == "c":
            target = data["extra"]
            parts = urlsplit(target) if isinstance(target, str) else None
            if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
                raise InvalidToken("not a web link")
        with self.db.transaction() as conn:
            domain = conn.execute("SELECT d.id, d.account_id, a.state FROM domains d JOIN accounts a"
                                  " ON a.id = d.account_id WHERE d.id = %s", (data["domain_id"],)).fetchone()
            if domain is None or domain["account_id"] != data["account_id"]:
                raise InvalidToken("unknown domain")
            if domain["state"] in NOT_PROCESSING:  # nothing recorded, no redirect with the account's data
                raise InvalidToken("the account is closed or its processing restricted")
            message = conn.execute(
                "SELECT m.* FROM messages m JOIN recipients r ON r.message_pk = m.id"
                " WHERE m.domain_id = %s AND m.message_id = %s AND r.address = %s ORDER BY m.id LIMIT 1",
                (data["domain_id"], data["message_id"], data["recipient"])).fetchone()
            if message is None:
                raise InvalidToken("unknown message")
            fields = {"ip": ip, "client_info": client_info(user_agent), "geolocation":
                      {"country": "Unknown", "region": "Unknown", "city": "Unknown"}}
            if kind == "c":
                fields["url"] = data["extra"]
            if kind == "l":
                fields["mailing-list"] = {"address": data["extra"]}
            event = NewEvent(message["account_id"], message["domain_id"], message["id"],
                             item(KINDS[kind], message=message, recipient=data["recipient"], ts=time.time(),
                                  **fields))
            self.events.record(conn, [event])
            if kind == "l" and self.lists is not None:
                self.lists.unsubscribe(conn, data["account_id"], data["extra"], data["recipient"])
            if kind == "u" and self.suppressions is not None:
                self.suppressions.add_unsubscribe(conn, message["domain_id"], data["recipient"],
                                                  data["extra"] or ["*"])
        self.events.committed([event])
        return data


def _before_body_end(text: str, snippet: str) -> str:
    index = text.lower().rfind("</body>")
    return text + snippet if index < 0 else text[:index] + snippet + text[index:]


def _text_parts(msg) -> list[tuple]:
    """The text/html and text/plain body parts: (part, subtype, decoded text, other headers, had MIME-Version)."""
    found = []
    for part in msg.walk():
        if part.is_multipart() or part.is_attachment():
            continue
        ctype = part.get_content_type()
        if ctype not in ("text/html", "text/plain"):
            continue
        try:
            text = part.get_content()
        except (LookupError, UnicodeError):
            continue
        # Names first: parsing every header's value (items()) costs ~40 ms for a 5 KB variables header,
        # per copy, and only the Content-* ones are needed.
        other = [(k, v) for k in dict.fromkeys(part.keys()) if k.lower().startswith("content-")
                 and k.lower() not in ("content-type", "content-transfer-encoding") for v in part.get_all(k)]
        found.append((part, ctype.split("/")[1], text, other, "MIME-Version" in part))
    return found


def _set_text(part, text: str, subtype: str, other: list, had_version: bool) -> None:
    part.set_content(text, subtype=subtype, charset="utf-8")  # drops every Content-* header
    for name, value in other:  # Content-Disposition, Content-ID, ... come back
        part[name] = value
    if not had_version:  # set_content adds one; a subpart doesn't need it
        del part["MIME-Version"]
