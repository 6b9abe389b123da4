"""The accept check for o:sending-ip / o:sending-ip-pool: a message may ask only for its account's own
dedicated IP or IP pool (Mailgun answers 403 otherwise)."""

from __future__ import annotations

from envoi.ips.service import Ips
from envoi.mta.compose import Draft


class SendingIpCheck:
    """An intake AcceptCheck over the IP inventory."""

    def __init__(self, ips: Ips):
        self.ips = ips

    def __call__(self, domain: dict, draft: Draft) -> None:
        options = draft.options or {}
        if options.get("sending_ip") or options.get("sending_ip_pool"):
            self.ips.check_sending(domain["account_id"], options)  # IpNotAllowed: 403 / 550 5.7.1
