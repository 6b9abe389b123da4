"""mail.log, aiosmtpd's logger: the listener's command loop logs each command line only when the logger
would emit it (envoi smtp keeps it at WARNING), and then as aiosmtpd did."""

from __future__ import annotations

import logging
import smtplib

import pytest

from envoi.mta.listener import Listener, SessionOptions


class _Hooks:
    async def handle_DATA(self, server, session, envelope) -> str:
        return "250 2.0.0 Ok"


def _converse(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("a@sender.example", ["r@rcpt.example"], b"Subject: s\r\n\r\nbody\r\n")


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING])
def test_command_lines_are_logged_at_the_logger_s_level(caplog, level):
    caplog.set_level(level, logger="mail.log")
    with Listener(_Hooks(), SessionOptions(hostname="test", ident="test", data_size_limit=1 << 20)) as listener:
        _converse(listener.port)
    lines = [r.getMessage() for r in caplog.records if r.name == "mail.log"]
    received = [line for line in lines if " >> " in line]
    read = [line for line in lines if line.startswith("_handle_client readline: ")]
    if level > logging.INFO:
        assert received == [] and read == []
        return
    assert [line.partition(" >> ")[2] for line in received] == [  # smtplib's commands, as it spells them
        "b'ehlo [127.0.0.1]'", "b'mail FROM:<a@sender.example> size=20'", "b'rcpt TO:<r@rcpt.example>'", "b'data'",
        "b'QUIT'"]
    assert (read != []) == (level == logging.DEBUG)
    if read:
        assert "_handle_client readline: b'data\\r\\n'" in read
