"""Reply classification against a corpus of real-world SMTP replies (as aiosmtplib reports them:
code apart, continuation lines joined with newlines) and DSN Diagnostic-Codes."""

from __future__ import annotations

import pytest

from envoi.mta.delivery.outcome import (
    BounceClass,
    Kind,
    classify_reply,
    enhanced_code,
    from_reply,
    reply_code,
)

B = BounceClass

CORPUS = [
    # Gmail
    (550, "5.1.1 The email account that you tried to reach does not exist. Please try\n5.1.1 double-checking the "
          "recipient's email address for typos or\n5.1.1 unnecessary spaces. For more information, go to\n5.1.1  "
          "https://support.google.com/mail/?p=NoSuchUser a1si123456ejb.3 - gsmtp", B.INVALID_RECIPIENT, True),
    (452, "4.2.2 The email account that you tried to reach is over quota. Please direct\n4.2.2 the recipient to\n"
          "4.2.2  https://support.google.com/mail/?p=OverQuotaTemp a1si12 - gsmtp", B.MAILBOX_FULL, False),
    (552, "5.2.2 The recipient's inbox is out of storage space and inactive. Please direct the recipient to\n"
          "5.2.2 https://support.google.com/mail/?p=OverQuotaPerm a1si12 - gsmtp", B.MAILBOX_FULL, False),
    (550, "5.2.1 The email account that you tried to reach is disabled. Learn more at\n5.2.1  "
          "https://support.google.com/mail/?p=DisabledUser a1si12 - gsmtp", B.INACTIVE_MAILBOX, True),
    (550, "5.7.1 [192.0.2.25] Our system has detected that this message is\n5.7.1 likely unsolicited mail. To "
          "reduce the amount of spam sent to Gmail,\n5.7.1 this message has been blocked. Please visit\n5.7.1  "
          "https://support.google.com/mail/?p=UnsolicitedMessageError a1si12 - gsmtp", B.SPAM_BLOCK, False),
    (550, "5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail requires all senders "
          "to authenticate with either SPF or DKIM.", B.AUTHENTICATION, False),
    (421, "4.7.28 [192.0.2.25] Our system has detected an unusual rate of\n4.7.28 unsolicited mail originating "
          "from your IP address. To protect our\n4.7.28 users from spam, mail sent from your IP address has been "
          "temporarily\n4.7.28 rate limited.", B.RATE_LIMIT, False),
    (421, "4.7.0 Try again later, closing connection. (EHLO) a1si12 - gsmtp", B.POLICY, False),
    (550, "5.7.25 [192.0.2.25] The IP address sending this message does not have a\n5.7.25 PTR record setup",
     B.AUTHENTICATION, False),
    # Outlook / Exchange Online
    (550, "5.5.0 Requested action not taken: mailbox unavailable (S2017062302) [DB5EUR03FT012.eop-EUR03.prod."
          "protection.outlook.com]", B.INVALID_RECIPIENT, True),
    (550, "5.4.1 Recipient address rejected: Access denied. For more information see https://aka.ms/EXOSmtpErrors"
          " [AM6PEPF00012345.eurprd03.prod.outlook.com]", B.INVALID_RECIPIENT, True),
    (550, "5.7.1 Unfortunately, messages from [192.0.2.25] weren't sent. Please contact your Internet service "
          "provider since part of their network is on our block list (S3150).", B.SPAM_BLOCK, False),
    (451, "4.7.500 Server busy. Please try again later from [192.0.2.25]. (S77719)", B.RATE_LIMIT, False),
    (550, "5.7.1 Service unavailable, Client host [192.0.2.25] blocked using Spamhaus. To request removal from "
          "this list see https://www.spamhaus.org/query/ip/192.0.2.25", B.SPAM_BLOCK, False),
    # Yahoo / AOL
    (554, "delivery error: dd This user doesn't have a yahoo.com account (x@yahoo.com) [0] - mta1234.mail.ne1.yahoo.com",
     B.INVALID_RECIPIENT, True),
    (554, "delivery error: dd Sorry, your message to x@yahoo.com cannot be delivered. This mailbox is disabled "
          "(554.30). - mta1234.mail.gq1.yahoo.com", B.INACTIVE_MAILBOX, True),
    (421, "4.7.0 [TSS04] Messages from 192.0.2.25 temporarily deferred due to unexpected volume or user "
          "complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", B.RATE_LIMIT, False),
    (553, "5.7.1 [BL21] Connections will not be accepted from 192.0.2.25, because the ip is in Spamhaus's list;",
     B.SPAM_BLOCK, False),
    # Postfix / Exim / generic
    (550, "5.1.1 <nobody@example.net>: Recipient address rejected: User unknown in virtual mailbox table",
     B.INVALID_RECIPIENT, True),
    (450, "4.2.0 <a@example.net>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/",
     B.POLICY, False),
    (554, "5.7.1 <a@example.net>: Relay access denied", B.POLICY, False),
    (550, "5.7.1 <a@example.net>: Recipient address rejected: Message rejected due to local policy",
     B.POLICY, False),
    (550, "5.1.2 <a@nonexistent.example>: Recipient address rejected: Domain not found", B.DNS, False),
    (552, "5.3.4 Message size exceeds fixed maximum message size", B.MESSAGE, False),
    (550, "Unrouteable address", B.INVALID_RECIPIENT, True),
    (550, "No such user here", B.INVALID_RECIPIENT, True),
    (550, "Requested action not taken: mailbox unavailable", B.INVALID_RECIPIENT, True),
    (554, "Transaction failed", B.OTHER, False),
    (421, "Service not available, closing transmission channel", B.CONNECTION, False),
    (550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
     B.INVALID_RECIPIENT, True),
    (452, "4.5.3 Too many recipients", B.RATE_LIMIT, False),
    (451, "4.3.0 Try again later", B.OTHER, False),
]


@pytest.mark.parametrize(("code", "text", "expected", "suppress"), CORPUS,
                         ids=[f"{c}-{t[:30]}" for c, t, _, _ in CORPUS])
def test_corpus(code, text, expected, suppress):
    outcome = from_reply(code, text)
    assert outcome.bounce_class is expected, text
    assert outcome.recipient_class is suppress
    assert outcome.kind is (Kind.RETRY if code < 500 else Kind.FAILED)


def test_temporary_invalid_recipient_text_is_never_recipient_class():
    outcome = from_reply(450, "4.1.1 <a@b>: Recipient address rejected: unverified address: lookup failed")
    assert outcome.bounce_class is B.INVALID_RECIPIENT and outcome.recipient_class is False


def test_delivered_has_no_class():
    outcome = from_reply(250, "2.0.0 OK 1763916012 a1si12 - gsmtp")
    assert outcome.kind is Kind.DELIVERED and outcome.bounce_class is B.NONE


def test_enhanced_code_and_reply_code_parsing():
    assert enhanced_code("5.1.1 no such user") == "5.1.1"
    assert enhanced_code("550-5.1.1 no such user") == "5.1.1"
    assert enhanced_code("550 5.7.26 blocked") == "5.7.26"
    assert enhanced_code("4.7.500 Server busy") == "4.7.500"
    assert enhanced_code("no code") == "" and enhanced_code("") == ""
    assert enhanced_code("55.1.1 nope") == ""
    assert reply_code("smtp; 550 5.1.1 x") == 550 and reply_code("nope") is None


def test_classify_dsn_diagnostic_codes():
    assert classify_reply("smtp; 550 5.1.1 <a@b>: Recipient address rejected: User unknown", "5.1.1") == (
        550, "5.1.1", B.INVALID_RECIPIENT)
    assert classify_reply("smtp; 552-5.2.2 The recipient's inbox is out of storage space", "5.2.2") == (
        552, "5.2.2", B.MAILBOX_FULL)
    # no reply code: derived from the status' class digit; status wins over the text's code
    assert classify_reply("X-Postfix; connect to mx[203.0.113.9]:25: Connection timed out", "4.4.1") == (
        450, "4.4.1", B.CONNECTION)
    assert classify_reply("", "5.1.1") == (550, "5.1.1", B.INVALID_RECIPIENT)
    assert classify_reply("smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found", "") == (
        550, "5.1.10", B.INVALID_RECIPIENT)


def test_retry_hint():
    assert from_reply(451, "4.7.1 Please try again in 120 seconds").retry_after == 120
    assert from_reply(451, "4.7.1 retry in 5 minutes").retry_after == 300
    assert from_reply(550, "5.1.1 try again in 5 minutes").retry_after is None


def test_rule_patterns_are_lower_case():
    # The rules run on lower-cased text without re.I: an upper-case literal would never match.
    import re

    from envoi.mta.delivery import outcome

    for _, pattern in outcome.STRONG_RULES + outcome.WEAK_RULES:
        literal = re.sub(r"\\[A-Za-z]", "", pattern.pattern)
        assert literal == literal.lower(), pattern.pattern
