"""The relay's messages are made ready for the wire in the signer threads (wire_message): the same
bytes Session._data made of them before, on the event loop."""

import random

import pytest

from envoi.mta.delivery.session import WireMessage, wire_message
from envoi.mta.signing import normalize_crlf


def _as_before(data: bytes) -> bytes:
    """Session._data's own steps before wire_message: CRLF line ends, then dot-stuffing."""
    data = normalize_crlf(data)
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


def test_wire_message_is_what_the_session_sent_for_every_kind_of_line():
    rng = random.Random(20)
    pieces = [b".", b"..", b"\r\n", b"\n", b"\r", b"a", b" ", b"From: x", b"\r\n.\r\n", b"\xc3\xa9"]
    for _ in range(3000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        made = wire_message(data)
        assert type(made) is WireMessage
        assert made == _as_before(data)
        # crlf=True: the caller normalised it already (the preparer does, for the signature).
        assert wire_message(normalize_crlf(data), crlf=True) == made


def test_a_clean_message_without_dot_lines_is_unchanged():
    data = b"From: a@example.com\r\n\r\nHello.\r\n"
    assert wire_message(data, crlf=True) == data


def test_the_preparer_sends_exactly_what_it_signed():
    """The preparer normalises once, signs those bytes (crlf=True) and makes them ready for the wire:
    what goes out, un-stuffed, verifies with dkimpy."""
    import asyncio
    import base64
    import os

    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from envoi.infra.crypto import Sealer
    from envoi.mta.delivery.claim import DomainKeys
    from envoi.mta.delivery.prepare import Preparer, prepared

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    keys = DomainKeys({"id": 7, "name": "example.com"}, pem, None, "example.com", "s1")
    sealer = Sealer(os.urandom(32))
    body = b"From: a@example.com\nTo: b@example.org\nSubject: dots\n\n.leading dot\r\nbare lf\n..two\r\n."
    message = {"id": 1, "domain_id": 7, "body": sealer.seal(body, b"k1"), "storage_key": "k1", "options": None,
               "dkim_signature": None}
    preparer = Preparer(sealer, lambda _: keys, signers=0)
    asyncio.run(preparer.prepare([message]))
    data = prepared(message)
    signature = preparer.signatures[1].encode()
    assert type(data) is WireMessage
    assert data == wire_message(signature + body)
    sent = data.replace(b"\r\n..", b"\r\n.")  # what the receiver keeps (RFC 5321 4.5.2)
    assert sent == signature + normalize_crlf(body)
    records = {"s1._domainkey.example.com.": f"v=DKIM1; k=rsa; p={public}".encode()}
    assert dkim.verify(sent, dnsfunc=lambda name, timeout=5: records.get(name.decode() if isinstance(name, bytes)
                                                                          else name))


def test_the_preparer_in_steps_makes_each_message_what_signing_it_alone_makes(monkeypatch):
    """The signer threads take a claim's messages through each step (open, hash, RSA, fields) over a
    chunk at a time: every message gets the bytes and signature that signing it alone gives, a message
    that cannot be prepared carries its own error, and its neighbours are not affected."""
    import asyncio
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from envoi.infra.crypto import CannotOpen, Sealer
    from envoi.mta.delivery import prepare
    from envoi.mta.delivery.claim import DomainKeys
    from envoi.mta.delivery.prepare import Preparer, prepared
    from envoi.mta.signing import DkimSigner

    monkeypatch.setattr("envoi.mta.signing.time.time", lambda: 1_765_000_000.5)  # one t= for both ways
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    keys = {7: DomainKeys({"id": 7}, pem, None, "example.com", "s1"),
            8: DomainKeys({"id": 8}, pem, None, "mail.example.org", "s2")}
    sealer = Sealer(os.urandom(32))
    rng = random.Random(21)
    bodies, messages = {}, []
    for i in range(2 * prepare.CHUNK + 5):
        body = (f"From: a{i}@example.com\r\nTo: b@example.org\r\nSubject: n{i} {'x' * rng.randint(0, 90)}\r\n\r\n"
                + "".join(rng.choice([".dot\r\n", "line  \r\n", "text\n", "\ttab\r\n"]) for _ in range(20))).encode()
        if i == 3:
            body = body.replace(b"From: ", b"Sender: ")  # no From: the signer refuses it
        bodies[i] = body
        messages.append({"id": i, "domain_id": 7 + i % 2, "body": sealer.seal(body, f"k{i}".encode()),
                         "storage_key": "wrong" if i == 5 else f"k{i}", "options": {"dkim": False} if i == 6 else None,
                         "dkim_signature": "DKIM-Signature: kept\r\n" if i == 9 else None})
    preparer = Preparer(sealer, keys.__getitem__, signers=2)
    asyncio.run(preparer.prepare(messages))
    alone = DkimSigner()
    for i, message in enumerate(messages):
        if i == 3:
            with pytest.raises(ValueError, match="no From"):
                prepared(message)
            continue
        if i == 5:
            with pytest.raises(CannotOpen):
                prepared(message)
            continue
        body = normalize_crlf(bodies[i])
        if i == 6:
            assert prepared(message) == wire_message(body)
            continue
        if i == 9:
            assert prepared(message) == wire_message(b"DKIM-Signature: kept\r\n" + body)
            continue
        k = keys[message["domain_id"]]
        signature = alone.sign(body, domain=k.signing_domain, selector=k.selector, private_key_pem=pem).decode()
        assert preparer.signatures[i] == message["dkim_signature"] == signature
        assert prepared(message) == wire_message(signature.encode() + body)
    assert set(preparer.signatures) == set(range(len(messages))) - {3, 5, 6, 9}
