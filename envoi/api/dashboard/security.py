"""The security headers of every dashboard response: one strict policy, no inline script or style.

Mail HTML is never part of a dashboard page: it is served alone with MAIL_HTML_POLICY (a CSP sandbox,
so it runs in an opaque origin with no script) and shown in a sandboxed iframe."""

from __future__ import annotations

from urllib.parse import urlsplit

PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
               " connect-src 'self'; frame-src 'self'; form-action 'self'; frame-ancestors 'none';"
               " base-uri 'none'")

#: A stored message's HTML: no script, no network but inline images; its own styles allowed.
MAIL_HTML_POLICY = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data: cid:; frame-ancestors 'self'"
#: The same once the reader asked for remote images.
MAIL_HTML_POLICY_IMAGES = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data: cid: https: http:;"
                           " frame-ancestors 'self'")

#: What Stripe's security guide lists for its own Stripe.js beyond its origin: its subdomains' scripts and
#: frames, its API, and 3-D Secure frames.
STRIPE_EXTRA = {"script-src": ["https://*.js.stripe.com"], "frame-src": ["https://*.js.stripe.com",
                                                                          "https://hooks.stripe.com"],
                "connect-src": ["https://api.stripe.com"]}
STRIPE_JS_ORIGIN = "https://js.stripe.com"


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def with_stripe_js(js_url: str) -> str:
    """The page policy of the card page, the only one that loads Stripe.js: script-src, frame-src and
    connect-src also allow Stripe.js's origin (with Stripe's own, the other origins Stripe's guide lists),
    everything else as strict as every page."""
    origin = origin_of(js_url)
    extra = {name: [origin] for name in ("script-src", "frame-src", "connect-src")}
    if origin == STRIPE_JS_ORIGIN:
        for name, values in STRIPE_EXTRA.items():
            extra[name] += values
    directives = []
    for directive in PAGE_POLICY.split(";"):
        name = directive.split()[0]
        directives.append(" ".join([directive.strip(), *extra.get(name, [])]))
    return "; ".join(directives)


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
    if "frame-ancestors 'self'" in policy:  # mail HTML, shown in the dashboard's own frame
        resp.set_header("X-Frame-Options", "SAMEORIGIN")
