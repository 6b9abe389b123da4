"""The QR code of the two-factor set-up: inline SVG the page's CSP allows, and a different code for a
different link."""

from envoi.api.dashboard.qr import qr_svg


def test_an_inline_svg_without_style_or_script_and_with_a_title():
    svg = qr_svg("otpauth://totp/Envoi:a%40b.test?secret=JBSWY3DPEHPK3PXP&issuer=Envoi", title="QR code")
    assert svg.startswith("<svg ") and svg.endswith("</svg>") and "<title>QR code</title>" in svg
    assert "style" not in svg and "<script" not in svg and "<?xml" not in svg
    assert 'class="qr-code"' in svg and 'viewBox="' in svg and "width=" not in svg


def test_the_code_follows_the_link():
    one = qr_svg("otpauth://totp/Envoi:a?secret=AAAAAAAAAAAAAAAA", title="t")
    assert one == qr_svg("otpauth://totp/Envoi:a?secret=AAAAAAAAAAAAAAAA", title="t")
    assert one != qr_svg("otpauth://totp/Envoi:a?secret=BBBBBBBBBBBBBBBB", title="t")
