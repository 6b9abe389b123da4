"""Build a region's services from Settings: the one place that wires packages together."""

from __future__ import annotations

from dataclasses import dataclass

from envoi.accounts.service import Accounts
from envoi.events.service import Events
from envoi.infra import redis as redis_infra
from envoi.infra.crypto import Sealer
from envoi.infra.db import Database
from envoi.infra.metrics import Metrics
from envoi.infra.settings import Settings
from envoi.mta.intake import Intake


@dataclass
class Services:
    settings: Settings
    db: Database
    redis: object
    doorbell: redis_infra.Doorbell
    sealer: Sealer
    accounts: Accounts
    events: Events
    intake: Intake
    metrics: Metrics

    def close(self) -> None:
        self.db.close()


def build(settings: Settings, *, pool_size: int = 10) -> Services:
    db = Database(settings.database_url, max_size=pool_size)
    redis = redis_infra.client(settings.redis_url)
    doorbell = redis_infra.Doorbell(redis, settings.redis_wakeup_key)
    sealer = Sealer(settings.secret_key)
    metrics = Metrics()
    accounts = Accounts(db, sealer, settings.region)
    events = Events(db, settings.public_url)
    intake = Intake(
        settings, db, accounts, events, sealer,
        on_commit=doorbell.ring,
        on_accepted=lambda count, method: metrics.accepted.labels(method).inc(count),
    )
    return Services(settings, db, redis, doorbell, sealer, accounts, events, intake, metrics)


def build_relay(services: Services):
    """The delivery engine for this region, sharing the services' database and metrics."""
    from envoi.mta.delivery.engine import Relay
    from envoi.mta.delivery.mx import MxResolver

    settings = services.settings
    return Relay(
        settings, services.db, services.accounts, services.sealer,
        events=services.events,
        resolver=MxResolver(settings.dns_resolver),
        wait_for_work=services.doorbell.wait,
        metrics=services.metrics,
    )
