"""The password in a webhook URL (https://user:pass@host/hook, sent as HTTP Basic auth): shown nowhere.

Wherever a URL is shown (API replies, delivery attempts, logs, error messages) it is `redact`ed to
https://user:***@host/hook. The database keeps that form in `url`, which stays the webhook's identity
in the API (a customer rotating the password keeps the same webhook), and the full URL sealed with
the region key in `url_sealed` (NULL when there is no password); the outbox copies both, and the job
that dials unseals. The password is what urlsplit (and so the dialler, ssrf.parse) takes for one: after
the first ':' of everything before the authority's last '@'.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#:]*):([^/?#]*)@")


def split(url: str) -> tuple[str, str | None]:
    """(the URL with its password masked, the password) or (url, None) when it has none."""
    m = _USERINFO.match(url or "")
    if m is None or not m[2]:
        return url, None
    return f"{m[1]}:{MASK}@{url[m.end():]}", m[2]


def redact(url: str) -> str:
    return split(url)[0]


def scrub(text: str | None, url: str) -> str | None:
    """`text` (an error message about `url`) without the URL's password, raw or percent-decoded."""
    _, password = split(url)
    if not text or not password:
        return text
    for secret in {password, unquote(password)}:
        text = text.replace(secret, MASK)
    return text


def context(domain_id: int) -> bytes:
    """Associated data of a sealed URL: it opens only as a URL of that domain's webhooks."""
    return f"webhook-url:{domain_id}".encode()
