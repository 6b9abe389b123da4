"""QR codes as inline SVG (segno, confined here): the two-factor set-up page shows the otpauth:// link
as one for the authenticator app's camera. Server-drawn, so the page loads nothing and runs no script."""

from __future__ import annotations

import segno


def qr_svg(text: str, *, title: str) -> str:
    """TEXT as an SVG QR code (error correction M), markup ready to inline: attributes only, no style
    (the dashboard's CSP forbids inline styles); its size comes from the stylesheet (.qr svg)."""
    return segno.make(text, error="m", micro=False).svg_inline(
        scale=4, title=title, svgclass="qr-code", lineclass=None, omitsize=True)
