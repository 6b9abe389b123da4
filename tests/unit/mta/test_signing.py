"""DKIM signing: every signature is checked with dkimpy's own verifier."""

import base64
import re

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from envoi.infra.dkim_keys import generate_ed25519
from envoi.mta.signing import (
    OVERSIGNED_HEADERS,
    SIGNED_HEADERS,
    DkimSigner,
    _split,
    normalize_crlf,
    relaxed_body,
    relaxed_headers,
)

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: Your receipt\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"List-Unsubscribe: <https://example.com/u/abc>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"X-Mailer: envoi\r\n"
    b"\r\n"
    b"Thanks for your order.\r\n"
)


@pytest.fixture(scope="module")
def rsa_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, base64.b64encode(public).decode()


@pytest.fixture(scope="module")
def dns(rsa_key):
    """TXT records as dkimpy's dnsfunc sees them."""
    records = {"s1._domainkey.example.com.": f"v=DKIM1; k=rsa; p={rsa_key[1]}"}

    def dnsfunc(name, timeout=5):
        value = records.get(name.decode())
        return value.encode() if value else None

    dnsfunc.records = records
    return dnsfunc


def sign(rsa_key, message=MESSAGE, signer=None, **kwargs):
    signer = signer or DkimSigner()
    return signer.sign(message, domain="example.com", selector="s1", private_key_pem=rsa_key[0], **kwargs)


def tags(header: bytes) -> dict[str, str]:
    unfolded = re.sub(rb"\r\n[ \t]", b" ", header).decode()
    value = unfolded.split(":", 1)[1]
    return {k.strip(): v.strip() for k, v in (t.split("=", 1) for t in value.split(";") if t.strip())}


def test_signature_verifies_with_dkimpy(rsa_key, dns):
    header = sign(rsa_key)
    assert header.startswith(b"DKIM-Signature:") and header.endswith(b"\r\n")
    assert dkim.verify(header + MESSAGE, dnsfunc=dns)


def test_signature_tags(rsa_key):
    t = tags(sign(rsa_key))
    assert t["a"] == "rsa-sha256"
    assert t["c"] == "relaxed/relaxed"
    assert t["d"] == "example.com" and t["s"] == "s1"
    assert "l" not in t  # a body length would let anyone append content
    h = [name.strip() for name in t["h"].split(":")]
    assert "list-unsubscribe-post" in h  # RFC 8058; not in dkimpy's defaults
    for name in OVERSIGNED_HEADERS & {"from", "to", "subject", "date", "message-id", "list-unsubscribe"}:
        assert h.count(name) == 2, name
    assert "cc" not in h and "reply-to" not in h  # absent headers are not signed
    assert "x-mailer" not in h and "x-mailer" not in SIGNED_HEADERS


def test_header_lines_are_folded(rsa_key):
    header = sign(rsa_key)
    assert all(len(line) <= 78 for line in header.split(b"\r\n"))


def test_tampered_subject_fails(rsa_key, dns):
    signed = sign(rsa_key) + MESSAGE
    assert not dkim.verify(signed.replace(b"Your receipt", b"Your invoice"), dnsfunc=dns)


@pytest.mark.parametrize("where", ["top", "bottom"])
def test_added_from_fails(rsa_key, dns, where):
    header = sign(rsa_key)
    extra = b"From: Mallory <ceo@example.com>\r\n"
    head, body = MESSAGE.split(b"\r\n\r\n", 1)
    tampered = extra + MESSAGE if where == "top" else head + b"\r\n" + extra + b"\r\n" + body
    assert not dkim.verify(header + tampered, dnsfunc=dns)


def test_added_list_unsubscribe_post_fails(rsa_key, dns):
    header = sign(rsa_key)
    tampered = b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" + MESSAGE
    assert not dkim.verify(header + tampered, dnsfunc=dns)


def test_changed_body_fails(rsa_key, dns):
    signed = sign(rsa_key) + MESSAGE
    assert not dkim.verify(signed + b"P.S. click here\r\n", dnsfunc=dns)


def test_relaxed_canonicalisation_tolerates_refolding(rsa_key, dns):
    signed = sign(rsa_key) + MESSAGE
    refolded = signed.replace(b"Subject: Your receipt", b"Subject:   Your\r\n\treceipt")
    assert dkim.verify(refolded, dnsfunc=dns)


def test_pem_parsed_once(rsa_key, dns):
    signer = DkimSigner()
    for _ in range(3):
        assert dkim.verify(sign(rsa_key, signer=signer) + MESSAGE, dnsfunc=dns)
    info = signer.cache_info()
    assert (info.misses, info.hits, info.size) == (1, 2, 1)


def test_key_cache_is_bounded_and_follows_key_rotation(rsa_key):
    signer = DkimSigner(cache_size=1)
    pem, _ = rsa_key
    pkcs8 = serialization.load_pem_private_key(pem, None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    signer.sign(MESSAGE, domain="example.com", selector="s1", private_key_pem=pem)
    signer.sign(MESSAGE, domain="example.com", selector="s1", private_key_pem=pkcs8)  # new material
    assert signer.cache_info().misses == 2
    assert signer.cache_info().size == 1


def test_ed25519_second_signature_verifies(rsa_key, dns):
    pytest.importorskip("nacl", reason="dkimpy verifies ed25519 with pynacl")
    private_pem, public_b64 = generate_ed25519()
    dns.records["ed1._domainkey.example.com."] = f"v=DKIM1; k=ed25519; p={public_b64}"

    headers = sign(rsa_key, ed25519=("ed1", private_pem))
    first, second = re.split(rb"\r\n(?=DKIM-Signature:)", headers)
    assert b"a=rsa-sha256" in first and b"a=ed25519-sha256" in second

    verifier = dkim.DKIM(headers + MESSAGE)
    assert verifier.verify(idx=0, dnsfunc=dns)
    assert verifier.verify(idx=1, dnsfunc=dns)
    tampered = dkim.DKIM(headers + MESSAGE.replace(b"receipt", b"invoice"))
    assert not tampered.verify(idx=1, dnsfunc=dns)


def test_ed25519_key_formats(rsa_key, dns):
    pytest.importorskip("nacl", reason="dkimpy verifies ed25519 with pynacl")
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    dns.records["ed2._domainkey.example.com."] = f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"
    for form in (seed, base64.b64encode(seed)):  # raw seed, and dkimpy's base64 seed
        headers = sign(rsa_key, ed25519=("ed2", form))
        assert dkim.DKIM(headers + MESSAGE).verify(idx=1, dnsfunc=dns)


def test_bare_lf_message_signs_after_normalisation(rsa_key, dns):
    lf_message = MESSAGE.replace(b"\r\n", b"\n")
    header = sign(rsa_key, message=lf_message)
    wire = normalize_crlf(lf_message)
    assert wire == MESSAGE
    assert dkim.verify(header + wire, dnsfunc=dns)


def test_normalize_crlf():
    assert normalize_crlf(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd\r\n"
    assert normalize_crlf(b"a\r\n") == b"a\r\n"


BODIES = [
    b"", b"\r\n", b"\r\n\r\n", b"a", b"a\r\n", b"a \r\n", b"a\t\r\n", b"a  b\r\n", b"a\tb\r\n",
    b" \t a \t \r\n\r\n \r\n", b"x\r\n\r\n\r\n", b"one two  three\t\tfour \r\n \r\nend", b"\t\r\n",
    b"trailing spaces   ", b"line\r\n   \r\n\t\r\n",
]


@pytest.mark.parametrize("body", BODIES)
def test_relaxed_body_matches_dkimpy(body):
    assert relaxed_body(body) == dkim.canonicalization.Relaxed.canonicalize_body(body)


def test_relaxed_body_matches_dkimpy_on_random_bodies():
    import random

    rng = random.Random(6376)
    for _ in range(5000):
        body = b"".join(rng.choice([b" ", b"\t", b"\r\n", b"a", b"bc", b"  ", b"\r\n\r\n", b"\r", b"\n", b" \t  "])
                        for _ in range(rng.randrange(0, 30)))
        assert relaxed_body(body) == dkim.canonicalization.Relaxed.canonicalize_body(body), body


def test_relaxed_headers_match_dkimpy():
    import random

    rng = random.Random(5322)
    pieces = [b" ", b"\t", b"\r\n ", b"\r\n\t", b"a", b"Bc", b"  ", b"\n ", b"x\r"]
    for _ in range(5000):
        headers = [[rng.choice([b"From", b"SUBJECT ", b"x-Tag", b"to"]),
                    b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 12)))
                    + rng.choice([b"\r\n", b"\r\n", b"\n", b"", b"\r", b" \r\n", b"\t\r\n"])]
                   for _ in range(rng.randrange(1, 5))]
        assert relaxed_headers(headers) == dkim.canonicalization.Relaxed.canonicalize_headers(headers), headers


def test_head_split_matches_dkimpy_rfc822_parse():
    """_split parses the head itself: the same fields as dkimpy's rfc822_parse (on the head, as before)
    for well-formed and odd heads (mbox From lines, folds, colons, spaces and 8-bit bytes in names,
    a fold first, an empty first line), and the same error where that raises."""
    import random

    rng = random.Random(2920)
    lines = [b"From: a@example.com", b"Subject: x", b"To:b", b" folded", b"\tfolded", b"From bob 2024", b"A::b",
             b"Sub ject: x", b"X-\x80: y", b": empty name", b"no colon", b"", b"List-Id: <l.example>", b"B:"]
    for _ in range(3000):
        head = b"\r\n".join(rng.choice(lines) for _ in range(rng.randrange(1, 7)))
        message = head + b"\r\n\r\nbody\r\n.\r\n"
        end = message.find(b"\r\n\r\n")
        try:
            expected = (dkim.rfc822_parse(message[: end + 4])[0], message[end + 4:])
        except Exception as ex:  # noqa: BLE001 - whatever dkimpy raises, _split must raise too
            with pytest.raises(type(ex)):
                _split(message)
            continue
        assert _split(message) == expected, message


def test_header_hash_matches_dkimpy_with_repeated_and_oversigned_names():
    import hashlib
    import random

    from envoi.mta.signing import _hash_header_fields, _include_headers

    rng = random.Random(6376_5)
    names = [b"From", b"To", b"Subject", b"Date", b"Reply-To", b"X-Other", b"List-Unsubscribe"]
    for _ in range(1000):
        headers = [(rng.choice(names), b" v%d\r\n" % i) for i in range(rng.randrange(1, 8))] + [(b"From", b" a\r\n")]
        rng.shuffle(headers)
        canonical = relaxed_headers(headers)
        include = _include_headers(canonical)
        unsigned = b" v=1; a=rsa-sha256; h=" + b":".join(include) + b";\r\n\tbh=abc; b="
        ours, theirs = hashlib.sha256(), hashlib.sha256()
        _hash_header_fields(ours, canonical, include, unsigned)
        dkim.hash_headers(theirs, dkim.canonicalization.Relaxed, canonical, include,
                          (b"DKIM-Signature", unsigned), None)
        assert ours.digest() == theirs.digest(), headers


def test_normalize_crlf_keeps_clean_messages_and_fixes_mixed_ones():
    assert normalize_crlf(MESSAGE) is MESSAGE
    assert normalize_crlf(b"a\r\nb\nc") == b"a\r\nb\r\nc\r\n"
    assert normalize_crlf(b"a\r\nb\rc\r\n") == b"a\r\nb\r\nc\r\n"


def test_message_without_from_is_refused(rsa_key):
    with pytest.raises(ValueError, match="From"):
        sign(rsa_key, message=b"To: bob@example.org\r\nSubject: x\r\n\r\nbody\r\n")


def test_non_rsa_key_is_refused():
    ed_pem, _ = generate_ed25519()
    with pytest.raises(ValueError, match="RSA"):
        DkimSigner().sign(MESSAGE, domain="example.com", selector="s1", private_key_pem=ed_pem)


def test_the_cached_head_of_the_field_folds_as_the_whole_field_does():
    """The tags up to h= are folded once per key, head and second (_folded_head); the rest continues
    from the column where they end: the same bytes as folding every piece in one pass."""
    import random

    from envoi.mta.signing import SIGNED_HEADERS, _fold, _folded_head

    rng = random.Random(6376)
    names = [n.encode() for n in SIGNED_HEADERS]
    for _ in range(500):
        include = tuple(rng.choice(names) for _ in range(rng.randrange(1, 30)))
        domain = b"d" * rng.randrange(1, 60) + b".example"
        selector = "s" * rng.randrange(1, 40)
        bh = base64.b64encode(bytes(32))
        head, column = _folded_head(b"rsa-sha256", domain, selector, b"1765000000", include)
        tail, end = _fold([(b" ", b"bh=" + bh + b";"), (b" ", b"b=")], column)
        pieces = [(b" ", b"v=1;"), (b" ", b"a=rsa-sha256;"), (b" ", b"c=relaxed/relaxed;"), (b" ", b"d=" + domain + b";"),
                  (b" ", b"s=" + selector.encode() + b";"), (b" ", b"t=1765000000;")]
        h = [b"h=" + include[0]] + [b":" + n for n in include[1:]]
        h[-1] += b";"
        pieces += [(b" ", h[0])] + [(b"", n) for n in h[1:]] + [(b" ", b"bh=" + bh + b";"), (b" ", b"b=")]
        assert (head + tail, end) == _fold(pieces)


def test_canonical_head_is_split_then_relaxed_headers():
    """The one-pass head (_canonical_head) gives what _split then relaxed_headers give, for CRLF
    messages with usual and odd heads (folds, a fold first, mbox From lines, no-field lines, runs of
    white space and tabs, empty values), and raises where they raise."""
    import random

    from envoi.mta.signing import _canonical_head

    rng = random.Random(6376)
    lines = [b"From: a@example.com", b"Subject:  two  spaces ", b"To:b", b" folded", b"\tfolded", b"From bob 2024",
             b"A::b", b"Sub ject: x", b"X-\x80: y", b": empty name", b"no colon", b"List-Id: <l.example>", b"B:",
             b"Content-Type: text/plain;\tcharset=utf-8", b"X-Tab:\tx\t", b"DATE : Mon", b"From bob: x",
             b"To!", b"B"]  # with no colon, a line less its last byte may be a name seen before
    for _ in range(5000):
        head = b"\r\n".join(rng.choice(lines) for _ in range(rng.randrange(1, 9)))
        message = normalize_crlf(head + rng.choice([b"\r\n\r\nbody\r\n", b"\r\n\r\n", b"\r\n"]))
        try:
            headers, body = _split(message)
            expected = (relaxed_headers(headers), body)
        except Exception as ex:  # noqa: BLE001 - whatever the two raise, _canonical_head must raise too
            with pytest.raises(type(ex)):
                _canonical_head(message)
            continue
        assert _canonical_head(message) == expected, message
