"""The security headers of every dashboard response: one strict policy, no inline script or style.

Mail HTML is never part of a dashboard page: it is served alone with MAIL_HTML_POLICY (a CSP sandbox,
so it runs in an opaque origin with no script) and shown in a sandboxed iframe."""

from __future__ import annotations

PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
               " connect-src 'self'; frame-src 'self'; form-action 'self'; frame-ancestors 'none';"
               " base-uri 'none'")

#: A stored message's HTML: no script, no network but inline images; its own styles allowed.
MAIL_HTML_POLICY = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data: cid:; frame-ancestors 'self'"
#: The same once the reader asked for remote images.
MAIL_HTML_POLICY_IMAGES = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data: cid: https: http:;"
                           " frame-ancestors 'self'")

PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def apply(resp, policy: str = PAGE_POLICY) -> None:
    for name, value in PAGE_HEADERS.items():
        resp.set_header(name, value)
    resp.set_header("Content-Security-Policy", policy)
    if policy != PAGE_POLICY:
        resp.set_header("X-Frame-Options", "SAMEORIGIN")
