"""Open/click/unsubscribe tracking: per-domain settings, signed tokens, rendering, and recording hits.

Rendering is an intake renderer: before a message is stored, its HTML links are rewritten to signed
click URLs, an open pixel is added, `%unsubscribe_url%` / `%tag_unsubscribe_url%` are substituted, the
domain's unsubscribe footer is appended, and `List-Unsubscribe` (https + mailto) with
`List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058) is added to the header, so the relay's
DKIM signature covers both. Tracking URLs are per recipient, so a copy addressed to several
recipients is split into one copy per recipient (as batch sends are). Links point at the domain's
tracking host ({web_scheme}://{web_prefix}.{domain}) or, in public_url mode, at ENVOI_PUBLIC_URL.

PERF: a copy is parsed once into a template (raw MIME, see _Plan) and only the tokens are made per
recipient: the email package's parse and re-serialisation cost 3-8 ms per recipient. A text part seen
again (the same HTML in request after request) is taken as rendered before, per domain and settings
(_SharedParts): only the message's own header and boundaries are read and its tokens made.

Tokens are opaque: base64url(version + nonce + AES-GCM-SIV(payload)) under a key derived from the
region's secret key, with the kind (o/c/u) as associated data. The payload binds account, domain,
Message-ID, recipient and (clicks) the target URL, so a tampered, foreign or re-targeted token fails
authentication and gets a 4xx (the click endpoint only ever redirects to a URL this system sealed),
and no address or URL can be read from a link.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import html
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from json.encoder import encode_basestring_ascii as _json_str
from urllib.parse import urlsplit

import user_agents
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from envoi.events.service import Events, NewEvent, item
from envoi.infra.cache import TTLCache
from envoi.infra.db import Connection, Database
from envoi.mta.compose import Composed, Draft
from envoi.mta.errors import TrackingSettingsError

KINDS = {"o": "opened", "c": "clicked", "u": "unsubscribed", "l": "unsubscribed"}  # l: from a mailing list
# A quoted href of an <a> tag, up to the first closing quote of its kind. (PERF: a negated class per kind of
# quote, not (["'])(.*?)\2: that lazy, backreferenced scan took 3x as long on a 10-link body.)
HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(?:"([^"]*)"|'([^']*)')""", re.I)
TEXT_URL = re.compile(r"""https?://[^\s<>"'\])]+""")
PLACEHOLDERS = ("%unsubscribe_url%", "%tag_unsubscribe_url%")
DEFAULT_HTML_FOOTER = '<p style="font-size:small">To unsubscribe click: <a href="%unsubscribe_url%">here</a></p>'
DEFAULT_TEXT_FOOTER = "\n\nTo unsubscribe click: <%unsubscribe_url%>\n"
TOKEN_VERSION = b"\x02"


class InvalidToken(ValueError):
    """A tracking token that cannot be honoured: forged, or ours but for something gone or unusable."""


class ForgedToken(InvalidToken):
    """A token that fails authentication: malformed, tampered with, another kind's, or not ours."""


#: Account states whose tracking links neither record nor redirect (docs/account-state.md).
NOT_PROCESSING = ("restricted", "closed")


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).decode().rstrip("=")


_URLSAFE = bytes.maketrans(b"+/", b"-_")


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
                 previous_keys: Sequence[bytes] = (), lists=None, host_mode: str = "domain"):
        self.db = db
        self.host_mode = host_mode  # "domain": links on each domain's tracking host; "public_url": on ours
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

    def list_unsubscribe_url(self, domain: dict, message_id: str, member: str, list_address: str) -> str:
        """%mailing_list_unsubscribe_url%: unsubscribes this member from this list only (not the domain)."""
        token = self.sign("l", domain["account_id"], domain["id"], message_id, member, list_address)
        return f"{self.base_url(domain)}/l/{token}"

    # rendering (an intake renderer) -----------------------------------------------------------
    def base_url(self, domain: dict) -> str:
        """Where a domain's links point: its tracking host `{web_scheme}://{web_prefix}.{name}` (a CNAME to
        this platform, as Mailgun's email.<domain>), or ENVOI_PUBLIC_URL in `public_url` mode (dev stacks,
        deployments without tracking CNAMEs)."""
        if self.host_mode == "public_url":
            return self.public_url
        return f"{domain.get('web_scheme') or 'http'}://{domain.get('web_prefix') or 'email'}.{domain['name']}"

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
            # (b"%" first: one memchr, where each placeholder's search reads the whole copy; a batch's copies
            # mostly have no % left once filled)
            b"%" in c.mime and (b"%unsub" in c.mime or b"be_url%" in c.mime) for c in draft.copies
        ):
            return draft  # nothing to track and no placeholder: the message is stored as composed
        base = self.base_url(domain)
        # PERF: each distinct copy (and each distinct body part) is parsed and its links found once, into a
        # template with slots; per recipient only its tokens are made and the changed parts re-encoded.
        plan = _Plan(opens=bool(opens), clicks=clicks,
                     html_footer=(domain_settings()["html_footer"] or DEFAULT_HTML_FOOTER) if footer else None,
                     text_footer=(domain_settings()["text_footer"] or DEFAULT_TEXT_FOOTER) if footer else None,
                     own=(base + "/", self.public_url + "/"), domain_id=domain["id"])
        signer = _Signer(self._aead, base, domain, draft)
        templates: dict[bytes, _Template] = {}
        batches: dict[int, _Batch | None] = {}
        copies: list[Composed] = []
        for copy in draft.copies:
            if copy.filled is not None and len(copy.recipients) == 1:
                # PERF: a batch send's copies differ only in their %recipient.*% values: its body is made
                # into a template once (not once per copy, ≈ 2/3 of a copy's render) where that gives the
                # very bytes rendering each copy would (_Batch).
                body = copy.filled[0]
                if (batch := batches.get(id(body), False)) is False:
                    batch = batches[id(body)] = _Batch.make(plan, copy.mime, body)
                if batch is not None and (mime := batch.fill(signer, copy)) is not None:
                    copies.append(Composed(copy.recipients, mime, copy.headers))
                    continue
            template = templates.get(copy.mime)
            if template is None:
                template = templates[copy.mime] = plan.template(copy.mime)
            for rcpt in copy.recipients:
                copies.append(Composed([rcpt], template.fill(signer, rcpt), copy.headers))
        return replace(draft, copies=copies)

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
            try:
                parts = urlsplit(target) if isinstance(target, str) else None
            except ValueError:
                parts = None
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


# Rendering: a copy's MIME as a template ------------------------------------------------------------
# The copy's raw bytes are split into parts without the email package (whose header parsing and
# re-serialisation cost milliseconds per copy): headers and parts left alone are copied byte for byte;
# each changed text part becomes literal text with slots (\x00key\x00: "o" pixel, "u" / "t" unsubscribe,
# "c<url>" a click) and is quoted-printable encoded per recipient once its slots are filled.

_FIELD_SPLIT = re.compile(rb"\r\n(?![ \t])")
_PARAM = re.compile(r""";\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)""")
_TEXT_URL_SLOTS = re.compile(r"""https?://[^\s<>"'\])\x00]+""")
_WEB_URL = re.compile(r"[\x00-\x20]*https?://[^/?#\s]", re.I)  # http(s) with a host, as urlsplit sees it
_REWRITTEN = (b"content-type", b"content-transfer-encoding")  # a changed text part's own, written anew
MAX_LINE = 998  # RFC 5322 line limit, in octets without CRLF
_LIST_SLOT = None  # where the List-Unsubscribe header of a recipient goes in a template's pieces
_PIXEL = '<img src="\x00o\x00" width="1" height="1" alt="" style="display:none !important" />'


def _fields(head: bytes) -> list[bytes]:
    """A header block (ending in CRLF) as its fields, each with its folded lines, without the final CRLF."""
    return _FIELD_SPLIT.split(head[:-2]) if head else []


def _name(field: bytes) -> bytes:
    return field.split(b":", 1)[0].strip().lower()


def _content_fields(fields: list[bytes]) -> dict[bytes, str]:
    """The first value of each Content-* field, unfolded (the only ones rendering reads)."""
    found: dict[bytes, str] = {}
    for f in fields:
        if f[:8].lower() == b"content-":
            name, _, value = f.partition(b":")
            found.setdefault(name.strip().lower(), value.replace(b"\r\n", b"").decode("latin-1").strip())
    return found


@functools.lru_cache(maxsize=512)  # a batch's copies repeat the same few Content-Type values (params are read only)
def _content_type(value: str | None, default: str) -> tuple[str, dict[str, str]]:
    if not value:
        return default, {}
    main, _, rest = value.partition(";")
    params = {k.lower(): v[1:-1].replace('\\"', '"').replace("\\\\", "\\") if v.startswith('"') else v
              for k, v in _PARAM.findall(";" + rest)}
    return main.strip().lower() or default, params


class _SharedParts:
    """Rendered text parts (as _TextPart, or as their bytes if unchanged) kept across messages, per
    domain and plan: the API's single-recipient sends repeat the same HTML and text parts request after
    request, each in a message of its own (own Message-ID and boundary), and a part's render (decode,
    scans, the link regex) was ≈ 40 % of such a message's. Only a part seen before is kept (a one-off
    body is not), and at most `budget` bytes of them (each counted at 3× its raw size: the raw key and
    the text of its pieces), dropped oldest first. Lookups take no lock (a dict's get is atomic).

    They are message content in plaintext, so none is kept longer than `ttl` seconds after it was
    rendered (data kept only as long as needed): an older one is not used, and (`timer`: the process's
    own instance) a timer running while anything is kept drops them within another `ttl`, traffic or not."""

    def __init__(self, budget: int, ttl: float = 300.0, timer: bool = False):
        self.budget = budget
        self.ttl = ttl
        self.timer = timer
        self.size = 0
        self._parts: dict[tuple, tuple] = {}  # key -> (value, monotonic time kept); oldest first
        self._sizes: dict[tuple, int] = {}
        self._seen: set[int] = set()
        self._lock = threading.Lock()
        self._purging: threading.Timer | None = None

    def get(self, key: tuple) -> tuple | None:
        if (kept := self._parts.get(key)) is None or time.monotonic() - kept[1] > self.ttl:
            return None
        return kept[0]

    def put(self, key: tuple, value: tuple, size: int) -> None:
        mark = hash(key)
        with self._lock:
            if mark not in self._seen:
                if len(self._seen) >= 4096:
                    self._seen.clear()
                self._seen.add(mark)
                return
            self._drop_expired()
            if size > self.budget or key in self._parts:
                return
            while self.size + size > self.budget:
                self._drop(next(iter(self._parts)))  # (under the lock: no put beside it changes the order)
            self._parts[key] = (value, time.monotonic())
            self._sizes[key] = size
            self.size += size
            if self.timer and self._purging is None:
                self._purge_later()

    def purge(self) -> None:
        """Drop what has expired; keep the timer running while anything is kept."""
        with self._lock:
            self._purging = None
            self._drop_expired()
            if self._parts:
                self._purge_later()

    def _purge_later(self) -> None:
        self._purging = threading.Timer(self.ttl, self.purge)
        self._purging.daemon = True
        self._purging.start()

    def _drop_expired(self) -> None:
        expired = time.monotonic() - self.ttl
        while self._parts:
            oldest = next(iter(self._parts))  # kept oldest first: the first one not expired ends it
            if self._parts[oldest][1] >= expired:
                return
            self._drop(oldest)

    def _drop(self, key: tuple) -> None:
        del self._parts[key]
        self.size -= self._sizes.pop(key)


_SHARED_PART_MAX = 64 * 1024  # bigger parts are rendered per message (and not kept)
_SHARED_PARTS = _SharedParts(budget=8 * 1024 * 1024, timer=True)


class _TextPart:
    """A changed text part: its new header block (less its encoding) and body text with slots (literals at
    even indices). Filled in, it is sent 7bit where it can be (ASCII, lines within 998 octets, as compose()
    writes bodies), else quoted-printable."""

    __slots__ = ("head", "pieces", "_lines")

    def __init__(self, head: bytes, pieces: list[str]):
        self.head = head
        self.pieces = pieces
        self._lines: tuple[int, int, int] | None = None  # _measure(), made on the first fill

    def fill(self, values: dict[str, str]) -> bytes:
        text = self.pieces[:]
        filled = text[1::2] = [values[k] for k in self.pieces[1::2]]
        data = "".join(text).encode("utf-8")
        if data.isascii() and self._fits(filled, data):
            return self.head + b"Content-Transfer-Encoding: 7bit\r\n\r\n" + data
        # (Encoding the literals once and only the values per recipient measured no faster: b2a_qp is C.)
        encoded = binascii.b2a_qp(data, istext=True)
        if b"\r\n" not in data:  # one line: b2a_qp would break it with bare LFs
            encoded = encoded.replace(b"=\n", b"=\r\n")
        return self.head + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + encoded

    def _fits(self, filled: list[str], data: bytes) -> bool:
        """_lines_fit(data) for this ASCII part filled with these values. PERF: the literals' lines are
        measured once per template; per fill, if no line can exceed MAX_LINE (the longest line without a
        slot, or the longest with slots plus as many of the longest value as a line has slots), the part
        is not split into its lines (≈ 6 % of a single message's render)."""
        lines = self._lines or self._measure()
        plain, slotted, most = lines
        if filled:
            values = "".join(filled)
            if "\n" in values:
                return _lines_fit(data)
            bound = max(plain, slotted + most * max(map(len, filled)))
        else:
            bound = plain
        return bound <= MAX_LINE or _lines_fit(data)

    def _measure(self) -> tuple[int, int, int]:
        """The longest LF-split line of the literals without a slot; of those with one or more, the longest
        less its slots; the most slots on a line (literals hold no NUL: a slot is marked by one here)."""
        plain = slotted = most = 0
        for line in "\x00".join(self.pieces[::2]).split("\n"):
            if (slots := line.count("\x00")) == 0:
                plain = max(plain, len(line))
            else:
                slotted = max(slotted, len(line) - slots)
                most = max(most, slots)
        self._lines = (plain, slotted, most)
        return self._lines


def _lines_fit(data: bytes) -> bool:
    """Whether every CRLF line of a filled text part is within MAX_LINE octets. The part has no bare LF (its
    text is made CRLF and the slots' values are URLs), so its lines are those split at LF, each but the last
    with its CR: PERF, splitting at one octet is 30 % faster; only a line of exactly MAX_LINE + 1 octets
    there (which may be MAX_LINE and a CR) needs the exact split."""
    longest = max(map(len, data.split(b"\n")))
    return longest <= MAX_LINE or longest == MAX_LINE + 1 and max(map(len, data.split(b"\r\n"))) <= MAX_LINE


class _Template:
    def __init__(self, pieces: list, keys: set[str], list_header: bool):
        self.pieces = pieces  # bytes, _TextPart, or _LIST_SLOT
        self.keys = keys
        self.list_header = list_header

    def fill(self, signer: _Signer, rcpt: str) -> bytes:
        values, header = signer.values(rcpt, self.keys, self.list_header)
        return b"".join(p if p.__class__ is bytes else header if p is _LIST_SLOT else p.fill(values)
                        for p in self.pieces)


_ASSOCIATED = {kind: b"envoi-tracking:" + kind.encode() for kind in ("c", "o", "u")}  # as sign() binds them
# _json_str(s) is what json.dumps(s) returns for a str (its C encoder), without json.dumps's set-up per call.


def _make_click_slot(base: str, key: str) -> tuple[bytes, bytes, str]:
    """A click slot's associated data, the end of its token's payload (the link's URL) and its URL's start."""
    return _ASSOCIATED["c"], f",{_json_str(key[1:])}]".encode(), f"{base}/c/"


# PERF: a link's slot was made anew in every message; the same links recur message after message (a few µs
# each of a 10-link message's render). Long URLs are not kept.
_click_slot = functools.lru_cache(maxsize=4096)(_make_click_slot)


class _Signer:
    """Per recipient: the tokens its template's slots need, made under the current key (the v2 format)."""

    def __init__(self, aead: AESGCMSIV, base: str, domain: dict, draft: Draft):
        self.aead = aead
        self.base = base
        self.domain_name = domain["name"]
        # json.dumps(..., separators=(",", ":")) of the payload, built from its parts once (PERF: json.dumps
        # sets up an encoder per call): ids are ints, strings JSON-encoded as its C encoder does.
        self.prefix = f"[{int(domain['account_id'])},{int(domain['id'])},{_json_str(draft.message_id)}"
        self.tags = f"[{','.join(map(_json_str, sorted(draft.tags)))}]" if draft.tags else None
        # slot key -> (its kind's associated data, the end of its payload, the start of its URL); a click's
        # is made on first use, once per message (a batch's recipients share it).
        self.slots: dict[str, tuple[bytes, bytes, str]] = {
            "o": (_ASSOCIATED["o"], b",null]", f"{base}/o/"),
            "u": (_ASSOCIATED["u"], b',["*"]]', f"{base}/u/")}
        if self.tags:
            self.slots["t"] = (_ASSOCIATED["u"], f",{self.tags}]".encode(), f"{base}/u/")

    def _click(self, key: str) -> tuple[bytes, bytes, str]:
        if key[0] != "c":
            raise KeyError(key)
        slot = self.slots[key] = _click_slot(self.base, key) if len(key) <= 512 else _make_click_slot(self.base, key)
        return slot

    def values(self, rcpt: str, keys: set[str], list_header: bool) -> tuple[dict[str, str], bytes]:
        head = f"{self.prefix},{_json_str(rcpt)}".encode()
        nonces = os.urandom(12 * (len(keys) + 2))  # the i-th key's at 12 * (i + 1), whether used or not
        seal = self.aead.encrypt
        slots = self.slots
        associated, end, url = slots["u"]
        unsub = _b64(TOKEN_VERSION + nonces[:12] + seal(nonces[:12], head + end, associated))
        values = {"u": url + unsub}
        at = 0
        for key in keys:
            at += 12
            if key == "u" or key == "t" and self.tags is None:  # the domain-wide unsubscribe: made above
                values[key] = values["u"]
                continue
            associated, end, url = slots.get(key) or self._click(key)
            nonce = nonces[at:at + 12]
            values[key] = url + _b64(TOKEN_VERSION + nonce + seal(nonce, head + end, associated))
        header = b""
        if list_header:
            mailto = f"mailto:unsubscribe@{self.domain_name}?subject=unsubscribe%20{unsub}"  # base64url: no quoting
            header = (f"List-Unsubscribe: <{values['u']}>,\r\n <{mailto}>\r\n"
                      "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n").encode()
        return values, header


class _Plan:
    """What to do to each text part of one message; builds (and caches, per distinct part) the templates."""

    def __init__(self, *, opens: bool, clicks: str, html_footer: str | None, text_footer: str | None,
                 own: tuple[str, ...], domain_id: int | None = None):
        # The key of this plan's parts in _SHARED_PARTS (None: not shared): what a part renders to depends
        # on the part, its default type and all of these. The domain is in it so that no tenant's render
        # time says whether another one sent a part.
        self.scope = None if domain_id is None else (domain_id, opens, clicks, html_footer, text_footer, own)
        self.opens = opens
        self.clicks = clicks
        self.html_footer = html_footer
        self.text_footer = text_footer
        self.own = own
        self._parts: dict[bytes, tuple[list, set[str], bool]] = {}
        # Set when a changed text part's text is not its raw bytes (quoted-printable, base64, a charset
        # other than UTF-8 or ASCII): its %recipient.*% are not those compose filled in (_Batch).
        self.decoded = False

    def batch_plan(self) -> _Plan:
        return _Plan(opens=self.opens, clicks=self.clicks, html_footer=self.html_footer,
                     text_footer=self.text_footer, own=self.own, domain_id=self.scope and self.scope[0])

    def template(self, mime: bytes) -> _Template:
        pieces: list = []
        keys: set[str] = set()
        flags = {"placeholder": False}
        top_fields = self._node(mime, pieces, keys, flags, top=True, default="text/plain")
        # PERF: the fields' names are read only if one may be List-Unsubscribe(-Post) (rarely: ours is added).
        listed = not top_fields or b"list-unsubscribe" in pieces[0].lower()
        theirs = listed and any(_name(f) == b"list-unsubscribe" for f in top_fields)
        list_header = (self.html_footer is not None or flags["placeholder"]) and not theirs \
            and not flags.get("bodiless")
        if list_header:
            if listed:  # ours replaces a caller's lone List-Unsubscribe-Post
                kept = [f for f in _fields(pieces[0]) if _name(f) != b"list-unsubscribe-post"]
                pieces[0] = b"".join(f + b"\r\n" for f in kept)
        elif pieces[1] is _LIST_SLOT:
            pieces[1] = b""
        merged: list = []
        for p in pieces:  # adjacent literals joined: fewer pieces to join per recipient
            if p.__class__ is bytes and merged and merged[-1].__class__ is bytes:
                merged[-1] += p
            else:
                merged.append(p)
        return _Template(merged, keys, list_header)

    def _node(self, raw: bytes, out: list, keys: set[str], flags: dict, *, top: bool, default: str) -> list[bytes]:
        """Append the pieces of one MIME entity (headers, blank line, body); return its header fields."""
        if not top and (cached := self._parts.get(raw)) is not None:
            pieces, part_keys, placeholder = cached
            out.extend(pieces)
            keys |= part_keys
            flags["placeholder"] = flags["placeholder"] or placeholder
            return []
        shared = None
        if not top and self.scope is not None and len(raw) <= _SHARED_PART_MAX:
            shared = (self.scope, default, raw)
            if (found := _SHARED_PARTS.get(shared)) is not None:
                pieces, part_keys, placeholder, decoded = found
                self._parts[raw] = (pieces, part_keys, placeholder)
                self.decoded = self.decoded or decoded
                out.extend(pieces)
                keys |= part_keys
                flags["placeholder"] = flags["placeholder"] or placeholder
                return []
        mine: list = []
        my_keys: set[str] = set()
        my_flags = {"placeholder": False}
        decoded, self.decoded = self.decoded, False
        fields = self._entity(raw, mine, my_keys, my_flags, top=top, default=default)
        part_decoded, self.decoded = self.decoded, decoded or self.decoded
        if my_flags.get("bodiless"):  # (was left in my_flags: a message without a body lost 2 octets)
            flags["bodiless"] = True
        if not top:
            self._parts[raw] = (mine, my_keys, my_flags["placeholder"])
            if shared is not None and my_flags.get("text") and not my_flags.get("nested"):
                _SHARED_PARTS.put(shared, (mine, my_keys, my_flags["placeholder"], part_decoded),
                                  3 * len(raw))
        out.extend(mine)
        keys |= my_keys
        flags["placeholder"] = flags["placeholder"] or my_flags["placeholder"]
        return fields

    def _entity(self, raw: bytes, out: list, keys: set[str], flags: dict, *, top: bool, default: str) -> list[bytes]:
        if raw.startswith(b"\r\n"):
            head, body = b"", raw[2:]
        else:
            end = raw.find(b"\r\n\r\n")
            if end < 0:  # no body: nothing to rewrite (and no header block to add to)
                out.extend([raw, _LIST_SLOT] if top else [raw])
                if top:  # stored as it came: no List-Unsubscribe after a last field without its line end
                    flags["bodiless"] = True
                return []
            head, body = raw[:end + 2], raw[end + 4:]
        fields = _fields(head)
        content = _content_fields(fields)
        ctype, params = _content_type(content.get(b"content-type"), default)
        cte = content.get(b"content-transfer-encoding", "").lower()
        if ctype.startswith("multipart/") and params.get("boundary"):
            flags["nested"] = True  # what it renders to depends on this plan's parts (not shared: _node)
            out.extend([head, _LIST_SLOT, b"\r\n"] if top else [head, b"\r\n"])
            self._multipart(body, params["boundary"].encode("latin-1"), out, keys, flags,
                            default="message/rfc822" if ctype == "multipart/digest" else "text/plain")
            return fields
        if ctype == "message/rfc822" and cte in ("", "7bit", "8bit", "binary"):
            flags["nested"] = True
            out.extend([head, _LIST_SLOT, b"\r\n"] if top else [head, b"\r\n"])
            self._node(body, out, keys, flags, top=False, default="text/plain")
            return fields
        part = None
        if ctype in ("text/html", "text/plain") and not (
                content.get(b"content-disposition", "")).lower().startswith("attachment"):
            flags["text"] = True  # worth keeping (_node): its text was decoded and scanned
            part = self._text(fields, ctype[5:], params, cte, body, keys, flags, top=top)
        if part is None:
            out.extend([head, _LIST_SLOT, b"\r\n" + body] if top else [head + b"\r\n" + body])
        elif top:  # the message is this one part: its List-Unsubscribe goes before the part's own fields
            kept = b"".join(f + b"\r\n" for f in fields if f[:8].lower() != b"content-" or _name(f) not in _REWRITTEN)
            out.extend([kept, _LIST_SLOT, part])
        else:
            out.append(part)
        return fields

    def _multipart(self, body: bytes, boundary: bytes, out: list, keys: set[str], flags: dict, *,
                   default: str) -> None:
        delimiters = _delimiters(body, boundary)
        if len(delimiters) < 2 or not delimiters[-1][2]:
            out.append(body)  # not a well-formed multipart: left as it is
            return
        out.append(body[:delimiters[0][1] + 2])
        for (_, end, _), (after_start, after_end, closing) in zip(delimiters, delimiters[1:], strict=False):
            self._node(body[end + 2:after_start], out, keys, flags, top=False, default=default)
            out.append(body[after_start:] if closing else body[after_start:after_end + 2])

    def _text(self, fields: list[bytes], subtype: str, params: dict, cte: str, body: bytes, keys: set[str],
              flags: dict, *, top: bool) -> _TextPart | None:
        try:
            if cte in ("", "7bit", "8bit", "binary"):
                data = body
            elif cte == "quoted-printable":
                data = binascii.a2b_qp(body)
            elif cte == "base64":
                data = binascii.a2b_base64(body)
            else:
                return None
            text = data.decode(params.get("charset") or "us-ascii", "replace")
        except (LookupError, binascii.Error, ValueError):
            return None
        if "\x00" in text:  # not mail text (RFC 5322 has no NUL); also our slot marker
            return None
        # Lines are written CRLF: a bare LF becomes CRLF (in the text and in what is added), a CRLF stays.
        # PERF: the text is brought to CRLF only if it has a bare LF (a composed body never has): converting
        # every line of both parts measured ≈ 30 µs of a single message's ≈ 150 µs render.
        if text.count("\n") != text.count("\r\n"):
            text = text.replace("\r\n", "\n").replace("\n", "\r\n")
        original = text
        # PERF: whether the text may hold a placeholder is decided by one scan, then by the footer added
        # (which may hold one, or complete one begun at the end of the text before it).
        marked = "_url%" in text
        if marked and any(p in text for p in PLACEHOLDERS):
            flags["placeholder"] = True
        if subtype == "html":
            if self.html_footer is not None:
                text = _before_body_end(text, _crlf(self.html_footer))  # (before "</body>": nothing to complete)
                marked = marked or _may_mark(self.html_footer)
            if marked:
                text = text.replace("%tag_unsubscribe_url%", "\x00t\x00").replace("%unsubscribe_url%", "\x00u\x00")
            if self.clicks != "no":
                text = HREF.sub(self._href, text)
            if self.opens:
                text = _before_body_end(text, _PIXEL)
        else:
            if self.text_footer is not None:
                text = text + _crlf(self.text_footer)
                marked = marked or _may_mark(self.text_footer)
            if marked:
                text = text.replace("%tag_unsubscribe_url%", "\x00t\x00").replace("%unsubscribe_url%", "\x00u\x00")
            if self.clicks == "yes":
                text = _TEXT_URL_SLOTS.sub(lambda m: self._slot(m.group(0)) or m.group(0), text)
        if text == original:
            return None
        pieces = text.split("\x00")
        keys.update(pieces[1::2])
        if cte not in ("", "7bit", "8bit", "binary") or (params.get("charset") or "us-ascii").lower() not in (
                "utf-8", "us-ascii"):
            self.decoded = True
        head = f'Content-Type: text/{subtype}; charset="utf-8"\r\n'.encode()
        if not top:
            head = b"".join(f + b"\r\n" for f in fields if f[:8].lower() != b"content-" or _name(f) not in _REWRITTEN) + head
        return _TextPart(head, pieces)

    def _slot(self, url: str) -> str | None:
        """The click slot for a link, or None for one left alone (not http(s) with a host, ours, or with a
        slot of its own inside)."""
        if not _WEB_URL.match(url) or "\x00" in url or url.startswith(self.own):
            return None
        if "[" in url:  # an IPv6 host: only a well-formed one (the click endpoint parses it again)
            try:
                urlsplit(url)
            except ValueError:
                return None
        return f"\x00c{url}\x00"

    def _href(self, m: re.Match) -> str:
        quoted = m.lastindex  # 2: in double quotes, 3: in single ones
        value = m.group(quoted)
        if "\r" in value:  # the link as it was read with LF line ends (the text is now CRLF), as tokens seal it
            value = value.replace("\r\n", "\n")
        slot = self._slot(html.unescape(value) if "&" in value else value)
        quote = '"' if quoted == 2 else "'"
        return m.group(0) if slot is None else m.group(1) + quote + slot + quote


_PLACEHOLDER = re.compile(r"%recipient(?:\.([A-Za-z0-9_\-:]+))?%")  # substitution's, in text
_PLACEHOLDER_BYTES = re.compile(rb"%recipient(?:\.([A-Za-z0-9_\-:]+))?%")
# A value that changes no decision rendering makes (no tag, quote, entity, URL scheme, placeholder or line
# end in it), between neighbours that cannot join it to one: other values take the per-copy path.
_INERT_VALUE = re.compile(r"[A-Za-z0-9 .,@_+\-]*")
_BEFORE_OK = frozenset(" \t\r\n,.;!?()>")
_AFTER_OK = frozenset(" \t\r\n,.;!?()<")


class _Batch:
    """A batch send's copies rendered from one template of its body with its %recipient.*% placeholders
    still in: per copy, only its own header block, its placeholders' values and its tokens.

    That gives the bytes rendering each filled copy gives when no value can change what rendering finds
    (links, placeholders, tags, </body>, line ends) and no placeholder is where one could: make() checks
    the template (each placeholder outside tags, links and slots, between neighbours that end a word and
    a URL; not in a footer; in parts whose text is their raw bytes, in the order compose filled them in),
    fill() each copy's values (_INERT_VALUE). Anything else is rendered per copy, as before."""

    def __init__(self, head_len: int, segments: list, names: dict, keys: set[str], list_header: bool,
                 static_len: int):
        self.head_len = head_len  # the first copy's header block, which each copy's own replaces
        self.segments = segments  # bytes split at placeholders, _LIST_SLOT, or _TextPart with them as keys
        # placeholder key (None: %recipient%) -> (its key in a _TextPart, in a bytes split, its occurrences)
        self.names = names
        self.keys = keys
        self.list_header = list_header
        self.static_len = static_len  # the body's length less its placeholders (a copy's is checked)

    @classmethod
    def make(cls, plan: _Plan, mime: bytes, body) -> _Batch | None:
        """body: the batch's substitution.BodyTemplate, `mime` one copy filled in from it."""
        head_len = mime.find(b"\r\n\r\n") + 2
        if head_len < 2 or any("%recipient" in f for f in (plan.html_footer, plan.text_footer) if f):
            return None
        head = mime[:head_len]
        probe = plan.batch_plan()
        template = probe.template(head + body.body)
        first = template.pieces[0]
        if probe.decoded or first.__class__ is not bytes or not first.startswith(head):
            return None
        segments: list = []
        order: list = []
        for piece in [first[head_len:], *template.pieces[1:]]:
            if piece.__class__ is bytes:
                split = _PLACEHOLDER_BYTES.split(piece)
                order.extend(split[1::2])
                segments.append(split)
            elif piece is _LIST_SLOT:
                segments.append(piece)
            else:
                part = cls._text_part(piece, order)
                if part is None:
                    return None
                segments.append(part)
        expected = body.parts[1::2]
        if [k if k is None or k.__class__ is bytes else k.encode() for k in order] != expected:
            return None  # a placeholder went into a link or a slot, or one compose filled is not seen here
        counts: dict = {}
        for k in expected:
            key = None if k is None else k.decode()
            counts[key] = counts.get(key, 0) + 1
        names = {k: ("\x01" if k is None else "\x01." + k, None if k is None else k.encode(), n)
                 for k, n in counts.items()}
        static_len = len(body.body) - sum(body.lengths)
        return cls(head_len, segments, names, template.keys, template.list_header, static_len)

    @staticmethod
    def _text_part(part: _TextPart, order: list) -> _TextPart | None:
        """The part with its placeholders as slots of their own (keys \x01.name), or None if one is where a
        value could change what rendering finds."""
        if b"%recipient" in part.head or any("%recipient" in k for k in part.pieces[1::2]):
            return None
        scan = "\x00".join(part.pieces)  # slots as NUL: no value may touch one
        html_part = b"text/html" in part.head
        for m in _PLACEHOLDER.finditer(scan):
            start, end = m.span()
            if (start and scan[start - 1] not in _BEFORE_OK) or (end < len(scan) and scan[end] not in _AFTER_OK):
                return None
            if html_part and scan.rfind("<", 0, start) > scan.rfind(">", 0, start):
                return None  # inside a tag
        pieces: list[str] = []
        for i, piece in enumerate(part.pieces):
            if i % 2:
                pieces.append(piece)
                continue
            split = _PLACEHOLDER.split(piece)
            for j, s in enumerate(split):
                if j % 2:
                    order.append(s)
                    pieces.append("\x01" if s is None else "\x01." + s)
                else:
                    pieces.append(s)
        return _TextPart(part.head, pieces)

    def fill(self, signer: _Signer, copy: Composed) -> bytes | None:
        """This copy rendered, or None if it must be rendered on its own (a value that is not inert)."""
        _, sub = copy.filled
        values: dict[str, str] = {}
        raw: dict[bytes | None, bytes] = {}
        length = self.static_len
        for key, (name, raw_key, count) in self.names.items():
            value = sub.value(key)
            if _INERT_VALUE.fullmatch(value) is None:
                return None
            values[name] = value
            raw[raw_key] = value.encode()
            length += len(value) * count
        mime = copy.mime
        head_len = mime.find(b"\r\n\r\n") + 2
        # The copy's body is this template's (a copy whose mime was made anew elsewhere has no .filled).
        if head_len < 2 or len(mime) - head_len != length or b"list-unsubscribe" in mime[:head_len].lower():
            return None
        tokens, header = signer.values(copy.recipients[0], self.keys, self.list_header)
        tokens.update(values)
        out = [mime[:head_len]]
        for seg in self.segments:
            if seg.__class__ is list:
                if len(seg) == 1:
                    out.append(seg[0])
                else:
                    filled = seg[:]
                    filled[1::2] = [raw[k] for k in seg[1::2]]
                    out.append(b"".join(filled))
            elif seg is _LIST_SLOT:
                out.append(header)
            else:
                out.append(seg.fill(tokens))
        return b"".join(out)


def _delimiters(body: bytes, boundary: bytes) -> list[tuple[int, int, bool]]:
    """The boundary delimiter lines of a multipart body up to its closing one: (start, end, closing), where
    start includes the CRLF before the line (it belongs to the delimiter) and end excludes the CRLF after."""
    found = []
    marker = b"--" + boundary
    at = 0
    while (at := body.find(marker, at)) >= 0:
        start = at
        at += len(marker)
        if start and body[start - 2:start] != b"\r\n":
            continue
        closing = body[at:at + 2] == b"--"
        end = at + 2 if closing else at
        while body[end:end + 1] in (b" ", b"\t"):
            end += 1
        if end != len(body) and body[end:end + 2] != b"\r\n":
            continue
        found.append((start - 2 if start else 0, end, closing))
        if closing:
            break
    return found


@functools.lru_cache(maxsize=64)  # a domain's footers, a few
def _crlf(text: str) -> str:
    """A footer as added to a CRLF text: its line ends, LF or CRLF (a browser's textarea sends CRLF), made CRLF."""
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


@functools.lru_cache(maxsize=64)
def _may_mark(footer: str) -> bool:
    """Whether a text with no "_url%" may have one once this footer is added: the footer has one, or
    begins with the rest of one ("url%", "rl%", "l%" or "%" after the text's "_", "_u", ...)."""
    footer = _crlf(footer)
    return "_url%" in footer or footer[:1] in ("", "u", "r", "l", "%")


def _before_body_end(text: str, snippet: str) -> str:
    index = text.rfind("</body>")
    if index < 0 or "</body>" in text[index + 7:].lower():  # PERF: lower-casing the whole body only if needed
        index = text.lower().rfind("</body>")
    return text + snippet if index < 0 else text[:index] + snippet + text[index:]
