"""The relay's egress chooser over the IP inventory: which source address and EHLO name a delivery uses."""

from __future__ import annotations

from envoi.infra.metrics import Metrics
from envoi.ips.egress import EgressView, NoEgressAvailable
from envoi.mta.delivery.session import Egress
from envoi.mta.store import HostAffinity


class IpEgress:
    """Adapts an EgressView to the relay's egress(message_row, domain_row, recipients) -> (Egress, how
    many of the recipients it carries) contract, counting each choice per IP and reason.

    Raises NoEgressAvailable(retry_after) when no IP may send now: the relay puts the delivery back."""

    def __init__(self, view: EgressView, metrics: Metrics | None = None):
        self.view = view
        self.metrics = metrics
        self._counters: dict[tuple[str, str], object] = {}  # PERF: .labels() per delivery was ~3 % of the relay

    def __call__(self, message: dict, domain: dict, recipients: int = 1) -> tuple[Egress, int]:
        try:
            choice = self.view.choose(message, domain, recipients)
        except NoEgressAvailable:
            if self.metrics is not None:
                self.metrics.egress_unavailable.inc()
            raise
        if self.metrics is not None:
            key = (choice.address or "", choice.via)
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = self.metrics.egress_deliveries.labels(*key)
            counter.inc()
        return Egress(choice.address, choice.helo), choice.recipients

    def pinned_elsewhere(self) -> HostAffinity:
        """What this relay leaves to other relay hosts at claim: domains whose IPs all live elsewhere, and
        owned o:sending-ip / o:sending-ip-pool whose IPs all live elsewhere, each with the domains whose
        policy lets that mail overflow to this host's shared pool when it waits too long (for an
        explicit pin only the domain's own ip_overflow: EgressView.policy_for)."""
        inv = self.view.inventory
        return HostAffinity(tuple(sorted(inv.elsewhere)), tuple(sorted(inv.overflow)),
                            tuple(sorted(inv.pins_elsewhere)),
                            tuple(sorted(d for d, policy in inv.policies.items() if policy == "overflow")))

    def stop(self) -> None:
        """Record usage and hand back unspent warm-up quota (the relay is exiting)."""
        self.view.stop()
