"""The accept check for o:sending-ip / o:sending-ip-pool: a message may ask only for its account's own
dedicated IP or IP pool (Mailgun answers 403 otherwise)."""

from __future__ import annotations

from envoi.ips.errors import IpNotAllowed
from envoi.ips.service import Ips
from envoi.mta.compose import Draft
from envoi.mta.errors import NotAllowed


class SendingIpCheck:
    """An intake AcceptCheck over the IP inventory."""

    def __init__(self, ips: Ips):
        self.ips = ips

    def __call__(self, domain: dict, draft: Draft) -> None:
        options = draft.options or {}
        if options.get("sending_ip") or options.get("sending_ip_pool"):
            try:
                self.ips.check_sending(domain["account_id"], options)
            except IpNotAllowed as ex:  # intake's own error: the API's 403 and SMTP's 550 5.7.1
                raise NotAllowed(ex.message) from ex
