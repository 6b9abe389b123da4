"""Signatures per second: dkimpy's pure-Python RSA against DkimSigner (OpenSSL), 5 KB message, RSA-2048.

.venv/bin/python bench/dkim_sign.py [seconds-per-contender]
"""

import sys
import time

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from envoi.mta.signing import SIGNED_HEADERS, DkimSigner


def message(size: int = 5000) -> bytes:
    head = (
        b"From: Shop <orders@example.com>\r\nTo: customer@example.org\r\nSubject: Your order\r\n"
        b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMessage-ID: <42@example.com>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nList-Unsubscribe: <https://example.com/u/x>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n"
    )
    line = b"Thank you for your order. Your parcel is on its way and will arrive soon.\r\n"
    return head + line * ((size - len(head)) // len(line) + 1)


def rate(sign, seconds: float) -> float:
    sign()  # warm-up (and the key cache for ours)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        sign()
        n += 1
    return n / elapsed


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    msg = message()
    headers = [h.encode() for h in SIGNED_HEADERS]
    signer = DkimSigner()

    native = rate(
        lambda: dkim.sign(
            msg, b"s1", b"example.com", pem, canonicalize=(b"relaxed", b"relaxed"), include_headers=headers
        ),
        seconds,
    )
    ours = rate(lambda: signer.sign(msg, domain="example.com", selector="s1", private_key_pem=pem), seconds)
    print(f"message {len(msg)} bytes, RSA-2048, relaxed/relaxed")
    print(f"dkimpy native : {native:8.0f} signatures/s")
    print(f"DkimSigner    : {ours:8.0f} signatures/s  ({ours / native:.1f}x)")


if __name__ == "__main__":
    main()
