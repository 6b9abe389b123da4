"""The relay's SMTP client (envoi.mta.delivery.session) reuses aiosmtplib's protocol for PIPELINING and
replaces its connection step: an aiosmtplib upgrade that changes what those rely on fails here, saying
what to re-check, instead of mis-pairing replies at run time. After re-checking, update the hash."""

from __future__ import annotations

import hashlib
import inspect

import pytest
from aiosmtplib.protocol import SMTPProtocol
from aiosmtplib.smtp import SMTP

# (class, method) -> (sha256 of its source in the tested aiosmtplib, what to re-check in session.py)
RELIED_ON = {
    (SMTP, "_create_connection"): ("0209e78602fdcfa7", "_Client._create_connection is its plain-TCP case: the "
                                                       "errors it raises, self.protocol/transport, the greeting"),
    (SMTP, "_on_connection_lost"): ("dc5d4d5724c76503", "_Client passes it to _Protocol as aiosmtplib does"),
    (SMTPProtocol, "data_received"): ("5edbbead3dc96987", "_Protocol.data_received buffers what it would drop "
                                                          "while a pipeline's replies are read"),
    (SMTPProtocol, "read_response"): ("0b9d810b358b1b0b", "_Protocol.replies: it clears _response_pending and "
                                                          "makes a new _response_waiter after each reply"),
    (SMTPProtocol, "_read_response_from_buffer"): ("064bd213eed7a04f", "_Protocol.replies parses buffered "
                                                                       "replies with it, in order"),
}


@pytest.mark.parametrize(("cls", "name"), sorted(RELIED_ON, key=lambda k: (k[0].__name__, k[1])))
def test_aiosmtplib_internals_the_relay_relies_on_are_unchanged(cls, name):
    expected, recheck = RELIED_ON[(cls, name)]
    actual = hashlib.sha256(inspect.getsource(getattr(cls, name)).encode()).hexdigest()[:16]
    assert actual == expected, f"aiosmtplib changed {cls.__name__}.{name}: re-check {recheck}, then update its hash"
