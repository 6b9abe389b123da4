"""Build a region's services from Settings: the one place that wires packages together."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from envoi.accounts.service import Accounts
from envoi.events.service import Events
from envoi.infra import redis as redis_infra
from envoi.infra.crypto import Sealer
from envoi.infra.db import Database
from envoi.infra.metrics import Metrics
from envoi.infra.settings import Settings, SettingsError
from envoi.mta.intake import Intake
from envoi.mta.stored_messages import StoredMessages
from envoi.privacy.service import Privacy
from envoi.wiring import delivery, events_out, ips, logs

FEATURES = (logs, events_out, ips, delivery)


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
    storage: StoredMessages
    privacy: Privacy
    # Set by envoi.wiring.* (one module per feature); None when a feature is not wired.
    suppressions: object | None = None
    webhooks: object | None = None
    tracking: object | None = None
    ips: object | None = None
    stream: object | None = None
    stats: object | None = None
    submission: object | None = None

    def close(self) -> None:
        self.db.close()


def build(settings: Settings, *, pool_size: int = 10) -> Services:
    if len(settings.secret_key) != 32:  # Settings made in code without one (from_env already refuses)
        raise SettingsError("ENVOI_SECRET_KEY is not set: give this region's key (base64 of 32 bytes)")
    db = Database(settings.database_url, max_size=pool_size, write_deadline=settings.db_write_deadline,
                  statement_timeout=settings.db_statement_timeout, pool_timeout=settings.db_pool_timeout)
    redis = redis_infra.client(settings.redis_url)
    doorbell = redis_infra.Doorbell(redis, settings.redis_wakeup_key)
    sealer = Sealer(settings.secret_key)
    metrics = Metrics(multiprocess_dir=settings.metrics_multiprocess_dir)
    accounts = Accounts(db, sealer, settings.region)
    events = Events(db, settings.public_url)
    intake = Intake(
        settings, db, accounts, events, sealer,
        on_commit=doorbell.ring,
        on_accepted=lambda count, method: metrics.accepted.labels(method).inc(count),
    )
    services = Services(settings, db, redis, doorbell, sealer, accounts, events, intake, metrics,
                        StoredMessages(db, sealer), Privacy(db))
    for feature in FEATURES:
        feature.wire(services)
    return services


def build_relay(services: Services):
    """The delivery engine for this region, sharing the services' database and metrics."""
    from envoi.mta.delivery.engine import Relay
    from envoi.mta.delivery.mx import MxResolver

    settings = services.settings
    options: dict = {}
    for feature in FEATURES:
        options.update(feature.relay_options(services))
    return Relay(
        settings, services.db, services.accounts, services.sealer,
        events=services.events,
        resolver=MxResolver(settings.dns_resolver),
        wait_for_work=services.doorbell.wait,
        metrics=services.metrics,
        **options,
    )


@dataclass(frozen=True)
class PeriodicTask:
    name: str
    every_seconds: float
    run: Callable[[], object]


def periodic_tasks(services: Services) -> list[PeriodicTask]:
    """What `envoi scheduler` runs: retention purges and each feature's housekeeping."""
    tasks = [PeriodicTask("purge expired message bodies", 600, services.storage.purge_expired)]
    for feature in FEATURES:
        extra = getattr(feature, "periodic", None)
        if extra is not None:
            tasks.extend(PeriodicTask(name, every, fn) for name, every, fn in extra(services))
    return tasks
