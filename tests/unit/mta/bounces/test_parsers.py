"""DSN (RFC 3464) and ARF (RFC 5965) parsers and VERP addresses: realistic samples and garbage."""

from __future__ import annotations

import os
import random

import pytest

from envoi.mta.bounces import arf, dsn, mime, verp
from tests.support import paths

FIXTURES = paths.FIXTURES / "bounces"
KEY = b"k" * 32


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# DSN --------------------------------------------------------------------------------------------
def test_postfix_dsn():
    report = dsn.parse(fixture("postfix_dsn.eml"))
    assert report.is_report and report.reporting_mta == "mx1.example.net"
    [rcpt] = report.recipients
    assert rcpt.final_recipient == rcpt.original_recipient == "nosuchuser@example.net"
    assert (rcpt.action, rcpt.status, rcpt.remote_mta) == ("failed", "5.1.1", "mailstore.example.net")
    assert rcpt.diagnostic_code.startswith("smtp; 550 5.1.1 <nosuchuser@example.net>: Recipient address rejected")
    assert "virtual mailbox table" in rcpt.diagnostic_code  # continuation line folded in
    assert rcpt.permanent and not rcpt.delayed and report.failures == [rcpt]
    assert report.original_message_id == "20261123164011.1.DEADBEEF@mg.example.com"
    assert report.original_return_path == "bounce+aaaq.aaaae.abcdefgh@mg.example.com"


def test_exchange_dsn_with_nested_alternative_and_rfc822():
    report = dsn.parse(fixture("exchange_dsn.eml"))
    [rcpt] = report.recipients
    assert (rcpt.final_recipient, rcpt.status, rcpt.action) == ("gone.user@contoso.example", "5.1.10", "failed")
    assert report.original_message_id == "20261123164011.1.DEADBEEF@mg.example.com"
    assert report.original_to == "<gone.user@contoso.example>"


def test_gmail_mailbox_full_dsn():
    report = dsn.parse(fixture("gmail_dsn_mailbox_full.eml"))
    [rcpt] = report.recipients
    assert rcpt.status == "5.2.2" and rcpt.permanent
    assert rcpt.remote_mta.startswith("gmail-smtp-in.l.google.com")
    assert rcpt.diagnostic_code.startswith("smtp; 552-5.2.2")


def test_delayed_dsn_is_not_a_failure():
    report = dsn.parse(fixture("delayed_dsn.eml"))
    [rcpt] = report.recipients
    assert rcpt.action == "delayed" and rcpt.status == "4.4.1" and rcpt.delayed
    assert report.failures == []


def test_plain_text_bounce_is_read_heuristically():
    report = dsn.parse(fixture("qmail_bounce.eml"))
    assert not report.is_report
    [rcpt] = report.recipients
    assert rcpt.heuristic and rcpt.status == "5.1.1" and rcpt.final_recipient == "olduser@example.info"
    assert "User unknown" in rcpt.diagnostic_code


def test_dsn_with_several_recipients_and_crlf():
    raw = (b"From: MAILER-DAEMON@x\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n"
           b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nsorry\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"
           b"Reporting-MTA: dns; x\r\n\r\nFinal-Recipient: rfc822; A@Example.net\r\nAction: failed\r\n"
           b"Status: 5.1.1\r\n\r\nFinal-Recipient: rfc822; b@example.net\r\nAction: delivered\r\nStatus: 2.0.0\r\n"
           b"\r\nFinal-Recipient: rfc822; c@example.net\r\nAction: failed\r\nStatus: 5.2.2 (mailbox full)\r\n"
           b"\r\n--b--\r\n")
    report = dsn.parse(raw)
    assert [(r.final_recipient, r.action, r.status) for r in report.recipients] == [
        ("a@example.net", "failed", "5.1.1"), ("b@example.net", "delivered", "2.0.0"),
        ("c@example.net", "failed", "5.2.2")]
    assert [r.final_recipient for r in report.failures] == ["a@example.net", "c@example.net"]


# ARF --------------------------------------------------------------------------------------------
def test_rfc5965_example():
    report = arf.parse(fixture("rfc5965_arf.eml"))
    assert report.is_report and report.is_complaint and report.feedback_type == "abuse"
    assert report.user_agent == "SomeGenerator/1.0" and report.version == "1"
    assert report.original_mail_from == "somespammer@example.net"
    assert report.original_rcpt_to == ["user@example.com"] and report.recipients == ["user@example.com"]
    assert report.source_ip == "192.0.2.1" and report.reported_domain == "example.net"
    assert report.original_message_id == "8787KJKJ3K4J3K4J3K4J3.mail@example.net"  # unbracketed in the RFC
    assert report.original_to == "" and report.original_subject == "Earn money"


def test_yahoo_arf_carries_our_verp():
    report = arf.parse(fixture("yahoo_arf.eml"))
    assert report.is_complaint
    assert report.verp_candidates == ["bounce+aaaq.aaaae.abcdefgh@mg.example.com"] * 2
    assert report.recipients == ["annoyed.reader@yahoo.example"]
    assert report.original_message_id == "20261123164011.1.DEADBEEF@mg.example.com"


def test_not_spam_is_not_a_complaint():
    raw = fixture("rfc5965_arf.eml").replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam")
    assert arf.parse(raw).is_report and not arf.parse(raw).is_complaint


def test_redacted_arf_falls_back_to_original_to():
    raw = fixture("yahoo_arf.eml").replace(b"Original-Rcpt-To: annoyed.reader@yahoo.example\n", b"")
    assert arf.parse(raw).recipients == ["annoyed.reader@yahoo.example"]


# garbage ----------------------------------------------------------------------------------------
GARBAGE = [
    b"", b"\x00\xff\xfe" * 100, b"not an email at all", b"Content-Type: multipart/report; boundary=\r\n\r\n--",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x\n"
    b"Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n!!!notbase64!!!\n--x",
    b"Content-Type: message/delivery-status\n\nFinal-Recipient: \nAction: \xff\xfe\nStatus: x.y.z\n",
    b"Content-Type: multipart/report; report-type=feedback-report; boundary=\"a\"\n\n--a\n"
    b"Content-Type: message/feedback-report\n\n:\n::\nFeedback-Type\n--a\nContent-Type: message/rfc822\n\n",
    b"Subject: =?utf-8?b?!!!?=\nContent-Type: text/plain; charset=x-unknown-charset\n\n550 5.1.1 a@",
    "Subject: ünïcode str input\n\nhello".encode(),
]


@pytest.mark.parametrize("raw", GARBAGE)
def test_garbage_never_raises(raw):
    report = dsn.parse(raw)
    assert report.failures == [] or all(r.status for r in report.failures)
    complaint = arf.parse(raw)
    assert isinstance(complaint.recipients, list)
    assert arf.parse(None).is_report is False and dsn.parse(12345).recipients == []


def test_random_mutations_never_raise():
    rng = random.Random(7)
    samples = [fixture(n) for n in os.listdir(FIXTURES)]
    for _ in range(300):
        data = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 30)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = rng.randrange(len(data))
        dsn.parse(bytes(data[:cut]))
        arf.parse(bytes(data[:cut]))


def test_huge_input_is_bounded():
    filler = b"X-Filler: " + b"a" * 998 + b"\n"
    raw = fixture("postfix_dsn.eml").replace(b"MIME-Version: 1.0\n", b"MIME-Version: 1.0\n" + filler * 2000, 1)
    assert len(raw) > 2 * mime.MAX_REPORT_BYTES
    report = dsn.parse(raw)  # cut at MAX_REPORT_BYTES: the headers are there, the report is not
    assert report.recipients == [] or report.recipients[0].heuristic


# VERP -------------------------------------------------------------------------------------------
def test_verp_round_trip_and_forms():
    address = verp.return_path("mg.example.com", 123456, 789, KEY)
    assert address.startswith("bounce+") and address.endswith("@mg.example.com") and len(address) < 64
    assert verp.parse(address, KEY) == (123456, 789)
    assert verp.parse(address.upper(), KEY) == (123456, 789)  # case-insensitive on the way back
    assert verp.parse(f"<{address}>", KEY) == (123456, 789)
    per_message = verp.message_return_path("mg.example.com", 2**62, KEY)
    assert verp.parse(per_message, KEY) == (2**62, None)
    assert verp.envelope_sender("mg.example.com", 5, [9], KEY) == verp.return_path("mg.example.com", 5, 9, KEY)
    assert verp.envelope_sender("mg.example.com", 5, [9, 10], KEY) == verp.message_return_path(
        "mg.example.com", 5, KEY)


def test_verp_mac_is_the_truncated_hmac_of_domain_message_and_recipient():
    """The MAC is computed from a copy of a keyed HMAC (no GIL release on the relay's loop): the same
    bytes as the one-shot HMAC, so addresses already out there keep verifying."""
    import base64
    import hmac

    for key in (KEY, b"x" * 32):
        for domain, message_pk, rcpt in (("MG.example.com", 123456, 789), ("b.example", 2**62, None)):
            payload = f"{domain.lower()}\0{message_pk}\0{'' if rcpt is None else rcpt}".encode()
            expected = base64.b32encode(hmac.digest(key, payload, "sha256")[:5]).decode().lower()
            assert verp.return_path(domain, message_pk, rcpt, key).split("@")[0].rsplit(".", 1)[1] == expected
            # The whole address, as the relay has always written it (domain lower-cased once).
            ids = [verp._b32(message_pk)] + ([] if rcpt is None else [verp._b32(rcpt)])
            assert verp.return_path(domain, message_pk, rcpt, key) == (
                f"bounce+{'.'.join(ids + [expected])}@{domain.lower()}")


def test_verp_base32_of_ids_is_b32encode_of_their_bytes():
    """The ids are encoded with a pair table (no b32encode loop on the relay's event loop): the same
    text as base64.b32encode of their big-endian bytes, for every length, so old addresses parse."""
    import base64
    import random

    rng = random.Random(2920)
    numbers = [0, 1, 31, 32, 255, 256, 2**40 - 1, 2**40, 2**62] + [rng.randrange(2 ** rng.randrange(1, 64))
                                                                   for _ in range(5000)]
    for n in numbers:
        raw = n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")
        assert verp._b32(n) == base64.b32encode(raw).decode().rstrip("=").lower(), n
        assert n == 0 or verp._unb32(verp._b32(n)) == n


def test_verp_rejects_forgeries():
    address = verp.return_path("mg.example.com", 42, 7, KEY)
    local, _, domain = address.partition("@")
    msg, rcpt, mac = local.removeprefix("bounce+").split(".")
    other_rcpt = verp.return_path("mg.example.com", 42, 8, KEY).split("+")[1].split(".")[1]
    assert verp.parse(f"bounce+{msg}.{other_rcpt}.{mac}@{domain}", KEY) is None  # another recipient
    assert verp.parse(f"{local}@other.example", KEY) is None  # another domain
    assert verp.parse(address, b"x" * 32) is None  # another key
    assert verp.parse(f"bounce+{msg}.{mac}@{domain}", KEY) is None  # dropped recipient
    assert verp.parse(f"bounce+{msg}.{rcpt}.aaaaaaaa@{domain}", KEY) is None
    for junk in ("", "bounce+@x", "bounce+a.b.c@x", "nobody@example.com", "bounce+!!!.aaaaaaaa@x", "@", None,
                 "bounce+" + "a" * 400 + "@x"):
        assert verp.parse(junk, KEY) is None
    with pytest.raises(ValueError):
        verp.return_path("x", 0, 1, KEY)
