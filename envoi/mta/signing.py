"""DKIM signing (RFC 6376, RFC 8463): dkimpy for parsing and canonicalisation, OpenSSL for the maths.

dkimpy's own RSA is pure Python (~160 signatures/s with a 2048-bit key); `cryptography` calls
OpenSSL and is ~20x faster. We reuse dkimpy's message parser, relaxed header canonicalisation and
header hashing (so what we hash is exactly what dkimpy's verifier hashes), then sign the digest
with `cryptography`.

Policy: relaxed/relaxed, no `l=` (it lets anyone append content), only present headers are
signed, and the ones an attacker would most like to add a second copy of are oversigned.

The signature covers `normalize_crlf(message)`: the caller must send exactly
`header + normalize_crlf(message)` (aiosmtplib normalises line endings the same way).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from collections import Counter
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim import rfc822_parse
from dkim.canonicalization import correct_empty_body, strip_trailing_lines

from envoi.infra.dkim_keys import CacheInfo, ParsedKeys

#: Headers signed when present, in h= order. dkimpy's default list lacks List-Unsubscribe-Post,
#: which RFC 8058 requires to be signed.
SIGNED_HEADERS: tuple[str, ...] = (
    "from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id",
    "in-reply-to", "references", "mime-version", "content-type", "content-transfer-encoding",
    "list-id", "list-unsubscribe", "list-unsubscribe-post", "feedback-id",
)  # fmt: skip

#: Listed once more than they occur, so a copy added in transit breaks the signature.
OVERSIGNED_HEADERS: frozenset[str] = frozenset({
    "from", "reply-to", "to", "cc", "subject", "date", "message-id",
    "list-unsubscribe", "list-unsubscribe-post",
})  # fmt: skip

_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")  # the same rule as aiosmtplib's
_WSP_TO_COLLAPSE = re.compile(rb"[\t ]{2,}|\t")  # runs that relaxed canonicalisation changes
_UNFOLD = re.compile(rb"\r?\n")
_MAX_LINE = 78
_NAME = b"DKIM-Signature"


def normalize_crlf(message: bytes) -> bytes:
    """Turn bare LF and bare CR into CRLF and end with CRLF: the bytes that go on the wire."""
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:  # counting is C-fast; sub is not
        message = _LINE_ENDINGS.sub(b"\r\n", message)
    return message if message.endswith(b"\r\n") else message + b"\r\n"


_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")  # printable ASCII but the colon: dkimpy's name rule


def _split(message: bytes) -> tuple[list, bytes]:
    """dkimpy's rfc822_parse for a CRLF message, the same (name, value) lists, in one pass over the
    head's lines with no regex per line (its re.split and re.match were ~7% of the relay's signing
    time); the body is everything after the first empty line, as there. A head it would treat
    differently (a continuation first, a line that is no field) goes through rfc822_parse itself."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return rfc822_parse(message)
    headers: list[list[bytes]] = []
    for line in message[:end].split(b"\r\n"):
        first = line[:1]
        if (first == b" " or first == b"\t") and headers:
            headers[-1][1] += line + b"\r\n"
            continue
        colon = line.find(b":")
        if colon > 0 and _FIELD_NAME.fullmatch(line, 0, colon):
            headers.append([line[:colon], line[colon + 1 :] + b"\r\n"])
        elif not line.startswith(b"From "):  # rfc822_parse skips an mbox From line; anything else: its way
            headers, _ = rfc822_parse(message[: end + 4])
            break
    return headers, message[end + 4 :]


#: Field names seen (as written) -> their relaxed form: a dict lookup instead of a regex match, lower() and
#: rstrip() per field; bounded (a head's names are few and repeat from message to message).
_RELAXED_NAMES: dict[bytes, bytes] = {}


def _canonical_head(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """relaxed_headers(_split(message)[0]) and the body, for a CRLF message. The usual head (no folded
    field, every line a field) in one pass without the intermediate lists (~40% of the two); any
    other goes through _split and relaxed_headers."""
    end = message.find(b"\r\n\r\n")
    head = message[:end]
    if end > 0 and b"\r\n " not in head and b"\r\n\t" not in head:
        canonical = []
        names = _RELAXED_NAMES
        for line in head.split(b"\r\n"):
            colon = line.find(b":")
            name = names.get(line[:colon]) if colon > 0 else None
            if name is None:
                if colon <= 0 or not _FIELD_NAME.fullmatch(line, 0, colon):
                    break  # an mbox From line, no field at all (or a fold first): _split's way
                name = line[:colon].lower().rstrip()
                if len(names) < 512:
                    names[line[:colon]] = name
            value = line[colon + 1 :]
            if b"\t" in value or b"  " in value:
                value = _WSP_TO_COLLAPSE.sub(b" ", value)
            canonical.append((name, value.strip() + b"\r\n"))
        else:
            return canonical, message[end + 4 :]
    headers, body = _split(message)
    return relaxed_headers(headers), body


def relaxed_headers(headers: list) -> list[tuple[bytes, bytes]]:
    """RFC 6376 relaxed header canonicalisation, byte for byte dkimpy's Relaxed.canonicalize_headers
    (which runs two regex substitutions per field even when nothing changes)."""
    out = []
    for name, value in headers:
        # A field's own line end needs no substitution (strip() below removes it): only a fold does.
        if value.find(b"\n", 0, len(value) - 1) >= 0:
            value = _UNFOLD.sub(b"", value)
        if b"\t" in value or b"  " in value:
            value = _WSP_TO_COLLAPSE.sub(b" ", value)
        out.append((name.lower().rstrip(), value.strip() + b"\r\n"))
    return out


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 relaxed body canonicalisation, byte for byte what dkimpy's Relaxed produces.

    dkimpy rewrites every single space with a regex (a substitution per word); here the
    substitutions run only where something changes, which made signing a 5 KB message ~3x cheaper.
    Where something does (white space ending lines, as format=flowed text has; runs of blanks), it is
    done with bytes methods: a regex tries a match at every blank (~50 us for 5 KB of prose).
    """
    tab = b"\t" in body  # one memchr; a tab is rare in mail bodies
    if tab or b" \r\n" in body:
        # [\t ]+ before each CRLF; what follows the last CRLF ends no line and keeps its blanks.
        lines = body.split(b"\r\n")
        last = lines.pop()
        body = b"\r\n".join([line.rstrip(b" \t") for line in lines] + [last])
    if tab or b"  " in body:
        # Every run of blanks (a tab alone included) to one space: tabs to spaces, then halve the runs.
        body = body.replace(b"\t", b" ")
        while b"  " in body:
            body = body.replace(b"  ", b" ")
    return correct_empty_body(strip_trailing_lines(body))


class DkimSigner:
    """Signs messages with keys parsed once (envoi.infra.dkim_keys keeps them). Thread-safe."""

    def __init__(self, cache_size: int = 1024):
        self.keys = ParsedKeys(cache_size)

    def sign(
        self,
        message: bytes,
        *,
        domain: str,
        selector: str,
        private_key_pem: bytes,
        ed25519: tuple[str, bytes] | None = None,
        crlf: bool = False,
    ) -> bytes:
        """Return the DKIM-Signature header field(s) (bytes, each ending CRLF) to prepend to message.

        ed25519 = optional (selector, raw-or-PEM ed25519 private key) for a second signature
        (RFC 8463); the RSA one comes first. The signatures cover normalize_crlf(message), which
        is what must be sent (crlf: message is that already). Raises ValueError for a message without
        From or an unusable key.
        """
        pending = self.begin(message, domain=domain, selector=selector, private_key_pem=private_key_pem,
                             ed25519=ed25519, crlf=crlf)
        return finish(pending, [raw_signature(p) for p in pending])

    def begin(
        self,
        message: bytes,
        *,
        domain: str,
        selector: str,
        private_key_pem: bytes,
        ed25519: tuple[str, bytes] | None = None,
        crlf: bool = False,
    ) -> list[Pending]:
        """sign() up to the private-key operations: what each signature signs, and with which key.
        raw_signature() makes each, finish() builds the fields; the relay's signer threads run these
        three steps over a batch of messages one after the other (the RSA calls back to back, the
        Python of every message together), which keeps each step's code and data in the caches."""
        canonical, body = _canonical_head(message if crlf else normalize_crlf(message))
        include = _include_headers(canonical)
        # Both signatures use relaxed body canonicalisation and SHA-256: hash the body once.
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
        common = _Common(
            domain=_domain_tag(domain),
            timestamp=str(int(time.time())).encode("ascii"),
            include=include,
            body_hash=body_hash,
            headers=canonical,
        )
        rsa_key = self.keys.rsa(domain, selector, private_key_pem)
        pending = [_pending(common, b"rsa-sha256", selector, rsa_key, True)]
        if ed25519 is not None:
            ed_selector, ed_key_data = ed25519
            ed_key = self.keys.ed25519(domain, ed_selector, ed_key_data)
            # RFC 8463: Ed25519 signs the SHA-256 digest of the header data.
            pending.append(_pending(common, b"ed25519-sha256", ed_selector, ed_key, False))
        return pending

    def cache_info(self) -> CacheInfo:
        return self.keys.info()


class _Common(NamedTuple):
    domain: bytes
    timestamp: bytes
    include: tuple[bytes, ...]
    body_hash: bytes
    headers: list[tuple[bytes, bytes]]


def _include_headers(canonical: list[tuple[bytes, bytes]]) -> tuple[bytes, ...]:
    return _include_for(tuple(name for name, _ in canonical))


@functools.lru_cache(maxsize=256)
def _include_for(names: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """h= for a head with these field names, in order (most messages share a handful of heads)."""
    counts = Counter(names)  # names are lower-case after canonicalisation
    if not counts[b"from"]:
        raise ValueError("message has no From header; DKIM requires signing it")
    include = []
    for name in SIGNED_HEADERS:
        n = counts[name.encode("ascii")]
        if n:
            include += [name.encode("ascii")] * (n + (name in OVERSIGNED_HEADERS))
    return tuple(include)


class Pending(NamedTuple):
    """One signature to make: the digest of its header data, the key, and its field up to b=."""

    key: object  # an RSA or Ed25519 private key
    rsa: bool
    digest: bytes
    unsigned: bytes  # the field's value up to and including "b="
    column: int  # where "b=" ends on its line


def raw_signature(pending: Pending) -> bytes:
    """The private-key operation of one signature (OpenSSL; it releases the GIL)."""
    if pending.rsa:
        return pending.key.sign(pending.digest, _PKCS1, _PREHASHED)
    return pending.key.sign(pending.digest)


def finish(pending: list[Pending], signatures: list[bytes]) -> bytes:
    """The DKIM-Signature field(s) from begin()'s pending signatures and their raw_signature()s."""
    return b"".join([_field(p, raw) for p, raw in zip(pending, signatures, strict=True)])


_PKCS1 = padding.PKCS1v15()  # stateless: one of each serves every call and thread
_PREHASHED = Prehashed(hashes.SHA256())


@functools.lru_cache(maxsize=256)
def _domain_tag(domain: str) -> bytes:
    return domain.encode("idna").lower()


def _pending(common: _Common, algorithm: bytes, selector: str, key, rsa: bool) -> Pending:
    """One DKIM-Signature field hashed with an empty b= (its b= value is folded on in _field)."""
    # Folding only ever adds whitespace where the grammar allows it (between tags, before a colon
    # in h=, inside b=). Since b= comes last, the unsigned field folds exactly like the signed
    # one up to "b=", which is all that the verifier hashes of it.
    head, column = _folded_head(algorithm, common.domain, selector, common.timestamp, common.include)
    tail, column = _fold([(b" ", b"bh=" + common.body_hash + b";"), (b" ", b"b=")], column)
    unsigned = head + tail
    hasher = hashlib.sha256()
    _hash_header_fields(hasher, common.headers, common.include, unsigned)
    return Pending(key, rsa, hasher.digest(), unsigned, column)


def _field(pending: Pending, raw: bytes) -> bytes:
    b64 = base64.b64encode(raw)
    # Fill the rest of the line, then whole continuation lines (" " + 77 characters).
    first = max(0, _MAX_LINE - pending.column)
    lines = [b64[:first]] + [b64[i : i + _MAX_LINE - 1] for i in range(first, len(b64), _MAX_LINE - 1)]
    return _NAME + b":" + pending.unsigned + b"\r\n ".join(lines) + b"\r\n"


def _hash_header_fields(hasher, canonical: list[tuple[bytes, bytes]], include: tuple[bytes, ...],
                        unsigned: bytes) -> None:
    """dkimpy's hash_headers for relaxed fields, without its per-call regexes (~4% of the relay's
    CPU): each name in h= takes the next field of that name from the bottom up (RFC 6376 5.4.2; an
    oversigned name finds none the extra time), then the signature field itself, relaxed and
    without its CRLF. test_signing checks the result against dkimpy's verifier."""
    last: dict[bytes, int] = {}
    for name in include:
        i = last.get(name, len(canonical))
        while i > 0:
            i -= 1
            if canonical[i][0] == name:
                hasher.update(name + b":" + canonical[i][1])
                break
        last[name] = i
    ((name, value),) = relaxed_headers([(_NAME, unsigned)])
    hasher.update(name + b":" + value.rstrip())


@functools.lru_cache(maxsize=64)
def _folded_head(algorithm: bytes, domain: bytes, selector: str, timestamp: bytes,
                 include: tuple[bytes, ...]) -> tuple[bytes, int]:
    """The field's tags up to h=, folded, and the column where they end: the same for every message
    signed with one key and head within a second (folding h= piece by piece was ~2% of the relay)."""
    pieces = [
        (b" ", b"v=1;"),
        (b" ", b"a=" + algorithm + b";"),
        (b" ", b"c=relaxed/relaxed;"),
        (b" ", b"d=" + domain + b";"),
        (b" ", b"s=" + selector.encode("ascii") + b";"),
        (b" ", b"t=" + timestamp + b";"),
    ]
    names = [b"h=" + include[0]] + [b":" + name for name in include[1:]]
    names[-1] += b";"
    pieces += [(b" ", names[0])] + [(b"", name) for name in names[1:]]
    return _fold(pieces)


def _fold(pieces: list[tuple[bytes, bytes]], column: int = len(_NAME) + 1) -> tuple[bytes, int]:
    """Join (separator, text) pieces, breaking lines between pieces to stay within 78 columns,
    starting at `column` (after "DKIM-Signature:" by default).

    Returns the folded bytes and the column where the last line ends.
    """
    out = []
    for separator, text in pieces:
        if column > 1 and column + len(separator) + len(text) > _MAX_LINE:
            out.append(b"\r\n ")
            column = 1
        else:
            out.append(separator)
            column += len(separator)
        out.append(text)
        column += len(text)
    return b"".join(out), column
