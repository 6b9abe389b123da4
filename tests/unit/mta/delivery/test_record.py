"""record.plan: what delivery outcomes mean for the schedule and the event log, with no database."""

from datetime import UTC, datetime, timedelta

from envoi.mta.delivery.destinations import Delivery
from envoi.mta.delivery.outcome import BounceClass, Kind, Outcome, internal_error, suppressed
from envoi.mta.delivery.record import plan
from envoi.mta.delivery.session import Egress

NOW = 1_800_000_000.0
NOW_DT = datetime.fromtimestamp(NOW, UTC)
SCHEDULE = (60.0, 600.0, 3600.0)


def message(pk=7, recipients=1, created=NOW - 2.5):
    return {"id": pk, "account_id": 1, "domain_id": 2, "mail_from": "a@example.com", "method": "http",
            "headers": {"to": "b@example.org", "message-id": "<m@example.com>", "from": "a@example.com",
                        "subject": "hi"},
            "tags": ["t"], "user_variables": {}, "options": {}, "attachments": [], "size": 100,
            "created_ts": created, "recipient_count": recipients}


def rcpt(rid=11, pk=7, attempts=0, expires_in=86400.0, address="b@example.org"):
    return {"id": rid, "message_pk": pk, "address": address, "attempts": attempts,
            "expires_at": NOW_DT + timedelta(seconds=expires_in)}


def delivery(msg, *rcpts):
    return Delivery(msg, {"name": "example.com"}, list(rcpts), Egress(None, "relay.test"))


def result(outcome, msg=None, r=None):
    msg = msg or message()
    r = r or rcpt(pk=msg["id"])
    return (delivery(msg, r), r, outcome)


def test_delivered_finishes_the_recipient_with_a_delivered_event():
    ok = Outcome(Kind.DELIVERED, 250, "2.0.0 queued", mx_host="mx.example.org", tls=True, sending_ip="192.0.2.1")
    done = plan([result(ok)], [], now=NOW, retry_schedule=SCHEDULE)
    assert done.finished == [(11, "delivered", 250, "2.0.0 queued")]
    assert done.rescheduled == [] and done.suppress == [] and done.failures == []
    [event] = done.events
    assert (event.account_id, event.domain_id, event.message_pk) == (1, 2, 7)
    data = event.data
    assert data["event"] == "delivered" and data["recipient"] == "b@example.org" and data["timestamp"] == NOW
    assert data["delivery-status"]["attempt-no"] == 1 and data["delivery-status"]["mx-host"] == "mx.example.org"
    assert data["envelope"]["sending-ip"] == "192.0.2.1"
    assert done.delivered_ages == [2.5]
    assert done.pending == set()  # sent to its only recipient: the signature need not be kept


def test_temporary_failure_reschedules_by_the_retry_schedule_and_counts_the_attempt():
    later = Outcome(Kind.RETRY, 451, "try later", bounce_class=BounceClass.POLICY)
    done = plan([result(later, r=rcpt(attempts=1))], [], now=NOW, retry_schedule=SCHEDULE)
    [(rid, next_at, code, text, counted)] = done.rescheduled
    assert (rid, code, text, counted) == (11, 451, "try later", True)
    assert 540 <= (next_at - NOW_DT).total_seconds() <= 660  # the 2nd step, 600 s, with ±10% jitter
    [event] = done.events
    assert event.data["severity"] == "temporary" and event.data["delivery-status"]["attempt-no"] == 2
    assert 540 <= event.data["delivery-status"]["retry-seconds"] <= 660
    assert done.finished == [] and done.failures == [("temporary", BounceClass.POLICY)]
    assert done.pending == {7}  # will be sent again: keep its signature


def test_remote_hint_longer_than_the_schedule_wins():
    later = Outcome(Kind.RETRY, 421, "slow down", retry_after=5000.0)
    done = plan([result(later)], [], now=NOW, retry_schedule=SCHEDULE)
    assert (done.rescheduled[0][1] - NOW_DT).total_seconds() == 5000.0


def test_a_retry_past_expiry_fails_for_good_as_too_old():
    later = Outcome(Kind.RETRY, 451, "try later")
    done = plan([result(later, r=rcpt(attempts=2, expires_in=60.0))], [], now=NOW, retry_schedule=SCHEDULE)
    assert done.finished == [(11, "failed", 451, "try later")] and done.rescheduled == []
    status = done.events[0].data["delivery-status"]
    assert done.events[0].data["severity"] == "permanent" and done.events[0].data["reason"] == "old"
    assert status["message"] == "Too old" and "Gave up after 3 attempts" in status["description"]
    assert done.failures == [("permanent", BounceClass.EXPIRED)]


def test_hard_bounce_of_the_address_goes_to_suppression_a_policy_refusal_does_not():
    unknown = Outcome(Kind.FAILED, 550, "5.1.1 no such user", bounce_class=BounceClass.INVALID_RECIPIENT)
    spam = Outcome(Kind.FAILED, 554, "5.7.1 spam", bounce_class=BounceClass.SPAM_BLOCK)
    msg = message(recipients=2)
    a, b = rcpt(11, address="a@example.org"), rcpt(12, address="b@example.org")
    done = plan([result(unknown, msg, a), result(spam, msg, b)], [], now=NOW, retry_schedule=SCHEDULE)
    assert done.finished == [(11, "failed", 550, "5.1.1 no such user"), (12, "failed", 554, "5.7.1 spam")]
    assert [(m["id"], address) for m, address, _ in done.suppress] == [(7, "a@example.org")]
    assert [e.data["reason"] for e in done.events] == ["bounce", "bounce"]
    assert done.pending == {7}  # more than one recipient: others may still need the signature


def test_suppressed_and_internal_errors_keep_their_reasons():
    done = plan([result(suppressed("suppress-complaint")), result(internal_error(ValueError("x"), 3))], [],
                now=NOW, retry_schedule=SCHEDULE)
    assert [f[2] for f in done.finished] == [607, 554]
    assert [e.data["reason"] for e in done.events] == ["suppress-complaint", "generic"]


def test_deferrals_go_back_without_an_attempt_or_an_event():
    done = plan([], [(rcpt(13, pk=9), 30.0)], now=NOW, retry_schedule=SCHEDULE)
    assert done.rescheduled == [(13, NOW_DT + timedelta(seconds=30), None, None, False)]
    assert done.events == [] and done.finished == []
    assert done.pending == {9}
