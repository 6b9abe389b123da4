"""Build a region's services from Settings: the one place that wires packages together.

build() makes the services every process shares, in dependency order; build_relay(),
build_submission() and build_inbound() add what one process (the relay, `envoi smtp`,
`envoi inbound`) runs on top of them, and periodic_tasks() lists what `envoi scheduler` runs.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from envoi.accounts.activity import Activity
from envoi.accounts.audit import Audit
from envoi.accounts.dkim import DkimKeys
from envoi.accounts.routing import RegionRouter
from envoi.accounts.service import Accounts, dns_targets
from envoi.accounts.sessions import Sessions
from envoi.accounts.subaccounts import Subaccounts
from envoi.accounts.throttle import LoginThrottle
from envoi.accounts.users import Users
from envoi.billing import plans as billing_plans
from envoi.billing.limits import PlanFeatureLimits
from envoi.billing.plans import Plans
from envoi.billing.quota import Quota, QuotaCheck
from envoi.billing.service import Billing
from envoi.billing.stripe_gateway import StripeGateway
from envoi.billing.usage import Usage
from envoi.events.analytics import Analytics
from envoi.events.logs import Logs
from envoi.events.service import PLAN_RETENTION, Events, Retention
from envoi.events.stats import Stats
from envoi.events.stream import LiveStream
from envoi.infra import redis as redis_infra
from envoi.infra import region_stamp, sealed_columns
from envoi.infra.crypto import Sealer
from envoi.infra.db import Database, connect, is_unavailable
from envoi.infra.metrics import Metrics
from envoi.infra.settings import Settings, SettingsError
from envoi.ips.service import Ips
from envoi.lists.service import MailingLists
from envoi.mta.dkim_rotation import DkimRotation
from envoi.mta.intake import Intake
from envoi.mta.list_expansion import ListExpander
from envoi.mta.mail_domains import MailDomains
from envoi.mta.queue import Queue
from envoi.mta.routes.service import Receiving, Routes
from envoi.mta.sending_ip import SendingIpCheck
from envoi.mta.stored_messages import StoredMessages
from envoi.mta.templated import TemplateSending
from envoi.mta.tracking import Tracking
from envoi.privacy.inactivity import Inactivity
from envoi.privacy.purge import MAX_DELAY, Purge
from envoi.privacy.service import Privacy
from envoi.suppression.sealed_address import AddressVault
from envoi.suppression.service import Suppressions
from envoi.templates.service import Templates
from envoi.validation import jobs as validation_jobs
from envoi.validation.service import Validation
from envoi.webhooks.service import Webhooks

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # process-specific parts, imported when a process builds them
    from envoi.mta.bounces.inbound import InboundServer
    from envoi.mta.delivery.egress import IpEgress
    from envoi.mta.delivery.engine import Relay
    from envoi.mta.submission.server import Submission


@dataclass
class Services:
    settings: Settings
    db: Database
    redis: redis_infra.Redis
    doorbell: redis_infra.Doorbell
    sealer: Sealer
    metrics: Metrics
    accounts: Accounts
    suppressions: Suppressions
    webhooks: Webhooks
    stats: Stats
    stream: LiveStream
    events: Events
    tracking: Tracking
    lists: MailingLists
    list_expander: ListExpander  # a send to a list: its subscribed members, one copy each
    ips: Ips
    intake: Intake
    queue: Queue
    storage: StoredMessages
    privacy: Privacy
    audit: Audit
    sessions: Sessions
    users: Users
    billing: Billing
    plans: Plans
    quota: Quota  # plans' caps at accept only with billing on (ENVOI_BILLING); custom monthly limits always
    subaccounts: Subaccounts  # /v5/accounts/subaccounts and custom monthly sending limits
    usage: Usage
    router: RegionRouter  # which region a login unknown here belongs to (routing, never transfer)
    purge: Purge  # deleted accounts' data, after ENVOI_ACCOUNT_PURGE_DELAY
    inactivity: Inactivity  # inactive accounts: warned, then purged
    routes: Routes  # inbound routes (/v3/routes) and the messages their store() kept
    templates: Templates  # stored templates (the templates API)
    template_sending: TemplateSending  # a send's stored template, rendered at accept (both edges)
    validation: Validation  # /v4/address/validate: single addresses and bulk jobs (run by `envoi worker`)
    analytics: Analytics  # /v1/analytics/metrics, usage, account tags, /v3/stats/filter, aggregates
    logs: Logs  # /v1/analytics/logs: the events store, account-wide
    dkim: DkimKeys  # DKIM keys, activation, rotation settings, selector and authority (/v1/dkim/keys)

    def close(self) -> None:
        self.db.close()
        if self.intake.db is not self.db:
            self.intake.db.close()
        if self.events.maintenance_db is not self.db:  # ENVOI_DATABASE_DIRECT_URL's (behind a pooler)
            self.events.maintenance_db.close()


def sealer_for(settings: Settings) -> Sealer:
    return Sealer(settings.secret_key, key_id=settings.secret_key_id, previous=settings.previous_secret_keys)


def check_sealing_keys(settings: Settings) -> None:
    """Before a long-running process starts: record its current key id and refuse to start
    (MissingKey, a SettingsError) if data may be sealed under a key it was not given. With the
    database unreachable the check is skipped (the process starts as it always did, and waits)."""
    try:
        with connect(settings.database_url, timeout=5, transaction_pooler=settings.db_transaction_pooler) as conn:
            sealed_columns.check_keys(conn, sealer_for(settings))
    except Exception as ex:
        if not is_unavailable(ex):
            raise
        log.warning("sealing keys not checked, the database is unavailable: %s", ex)


def build(settings: Settings, *, pool_size: int = 10) -> Services:
    if len(settings.secret_key) != 32:  # Settings made in code without one (from_env already refuses)
        raise SettingsError("ENVOI_SECRET_KEY is not set: give this region's key (base64 of 32 bytes)")
    if not 0 <= settings.account_purge_delay <= MAX_DELAY:
        raise SettingsError("ENVOI_ACCOUNT_PURGE_DELAY must be between 0 and 90 days (the privacy policy's"
                            f" promise), not {settings.account_purge_delay / 86400:g} days")
    if len(settings.lookup_key) != 32:
        raise SettingsError("ENVOI_LOOKUP_KEY is not set: give this region's lookup key (base64 of 32 bytes)")
    # The plans, once: a file that cannot be used stops the process here (PlansInvalid says why).
    plans = billing_plans.load(settings.billing_plans)
    # Infrastructure.
    metrics = Metrics(multiprocess_dir=settings.metrics_multiprocess_dir)
    store_errors = metrics.store_errors
    db = Database(settings.database_url, max_size=pool_size, write_deadline=settings.db_write_deadline,
                  statement_timeout=settings.db_statement_timeout, pool_timeout=settings.db_pool_timeout,
                  on_unavailable=store_errors.labels("postgres").inc, transaction_pooler=settings.db_transaction_pooler)
    # Behind a transaction pooler, what holds a session (the events upkeep's lock) goes straight to Postgres.
    direct_db = None
    if settings.database_direct_url and settings.database_direct_url != settings.database_url:
        direct_db = Database(settings.database_direct_url, min_size=0, max_size=1,
                             statement_timeout=settings.db_statement_timeout, pool_timeout=settings.db_pool_timeout,
                             on_unavailable=store_errors.labels("postgres").inc)
    redis = redis_infra.client(settings.redis_url, on_unavailable=store_errors.labels("redis").inc)
    try:
        claim_stores(settings, db, redis)
    except BaseException:
        db.close()
        if direct_db is not None:
            direct_db.close()
        raise
    stream = LiveStream(redis, settings.region, max_clients=settings.stream_max_clients,
                        max_seconds=settings.stream_max_seconds)
    # An intake commit's ring goes with the publish of its accepted events (one thread woken, one round trip).
    doorbell = redis_infra.Doorbell(redis, settings.redis_wakeup_key, carrier=stream.carry_ring)
    sealer = sealer_for(settings)
    audit = Audit(db)  # the account audit log: key, user and session actions
    # Billing on: plans' max_domains, max_users and dedicated_ips, enforced where each is added.
    limits = PlanFeatureLimits(plans) if settings.billing else None
    accounts = Accounts(db, sealer, settings.region,
                        key_revocations=redis_infra.Generation(redis, f"envoi:{settings.region}:keys:revoked"),
                        audit=audit, limits=limits)

    # What recording an event feeds.
    suppressions = Suppressions(db, settings.public_url, AddressVault(sealer, settings.lookup_key))
    webhooks = Webhooks(settings, db, sealer, redis, metrics)
    stats = Stats(db)
    events = Events(
        db, settings.public_url,
        retention=Retention(settings.event_retention, plan_retention(settings, plans)), maintenance_db=direct_db,
        # In the events' transaction: hourly rollup counts, webhook outbox rows, complaint suppressions.
        writers=[stats.rollup, webhooks.events_writer, suppressions.events_writer],
        # After commit: fold pending counts (every 2 s), publish to the live stream, wake the dispatcher.
        listeners=[stats.fold_soon, stream.publish, webhooks.events_listener],
    )

    lists = MailingLists(db, settings.public_url)
    tracking = Tracking(db, events, settings.secret_key, settings.public_url, suppressions=suppressions,
                        previous_keys=[key for _, key in settings.previous_secret_keys], lists=lists,
                        host_mode=settings.tracking_host_mode)
    list_expander = ListExpander(lists, tracking)
    ips = Ips(db, default_plan=settings.warmup_plan, relay_host=settings.relay_host, limits=limits)
    # Plans' caps at accept with billing on, and custom monthly limits (an atomic Redis count per message,
    # the plan and limit read with the key; nothing at all for an account with neither).
    quota = Quota(plans, redis_infra.BoundedCounters(redis), settings.region)
    templates = Templates(db)
    template_sending = TemplateSending(templates, max_bytes=settings.max_message_bytes)
    # The group commit writes one batch at a time: on a connection of its own it prepares and plans its
    # statements (one per batch shape) on one backend, once each, instead of on each of the pool's
    # connections in turn (psycopg's pool lends them round robin), five times each and once more.
    intake_db = Database(settings.database_url, min_size=0, max_size=1, write_deadline=settings.db_write_deadline,
                         statement_timeout=settings.db_statement_timeout, pool_timeout=settings.db_pool_timeout,
                         on_unavailable=store_errors.labels("postgres").inc,
                         transaction_pooler=settings.db_transaction_pooler, generic_plans=True)
    intake = Intake(
        settings, intake_db, accounts, events, sealer,
        checks=[SendingIpCheck(ips), QuotaCheck(quota, plan_caps=settings.billing)],  # custom limits: always
        renderers=[template_sending.render_submitted, tracking.render],  # templates first: links get tracked
        on_commit=doorbell.ring,
        on_accepted=lambda count, method: metrics.accepted.labels(method).inc(count),
        activity=Activity(),  # a send marks its account active, once a day per process
        expand_lists=list_expander.expand_mime,
    )
    # Dashboard users: their sessions, failed-login throttle and the account audit log.
    sessions = Sessions(db, idle=timedelta(seconds=settings.session_idle),
                        absolute=timedelta(seconds=settings.session_max))
    throttle = LoginThrottle(redis, f"envoi:{settings.region}:login-failures", max_per_email=settings.login_max_failures,
                             max_per_ip=settings.login_max_failures_ip, window=settings.login_window)
    users = Users(db, sealer, sessions, audit, throttle, limits=limits)
    storage = StoredMessages(db, sealer, events)
    # Billing with Stripe (off, refusing with a clear error, while ENVOI_STRIPE_SECRET_KEY is unset).
    # Card entry (Stripe.js on the billing page) only with billing on and a publishable key.
    gateway = StripeGateway(settings.stripe_secret_key, api_base=settings.stripe_api_base,
                            webhook_secret=settings.stripe_webhook_secret,
                            publishable_key=settings.stripe_publishable_key if settings.billing else "",
                            js_url=settings.stripe_js_url)
    billing = Billing(db, accounts, plans, gateway, grace_seconds=settings.billing_grace)
    purge = Purge(db, redis, settings.region, delay=settings.account_purge_delay, accounts=accounts, audit=audit,
                  throttle=throttle)
    inactivity = Inactivity(db, accounts, intake, storage, purge, after=settings.inactive_account_after,
                            notice=settings.inactive_account_notice, sender=settings.platform_sender,
                            public_url=settings.public_url)
    # Address validation: the region's resolver with a deadline; bulk batches go to RQ workers.
    validation = Validation(db, MailDomains(settings.dns_resolver, timeout=settings.validation_dns_timeout),
                            download_key=settings.secret_key, public_url=settings.public_url,
                            results_ttl=settings.validation_results_ttl, batch=settings.validation_batch,
                            concurrency=settings.validation_concurrency,
                            enqueue=validation_jobs.enqueuer(redis))
    return Services(
        settings=settings, db=db, redis=redis, doorbell=doorbell, sealer=sealer, metrics=metrics,
        accounts=accounts, suppressions=suppressions, webhooks=webhooks, stats=stats, stream=stream,
        events=events, tracking=tracking, lists=lists, list_expander=list_expander, ips=ips, intake=intake,
        storage=storage, privacy=Privacy(db, accounts, storage, suppressions, stream),
        audit=audit, sessions=sessions, users=users, billing=billing,
        routes=Routes(db, sealer, webhooks, settings.public_url),
        queue=Queue(db), plans=plans, quota=quota, usage=Usage(db), purge=purge, inactivity=inactivity,
        subaccounts=Subaccounts(db, accounts, audit),
        templates=templates, template_sending=template_sending, validation=validation,
        analytics=Analytics(db), logs=Logs(db, events.retention),
        dkim=DkimKeys(db, sealer, accounts, settings.dns_resolver),
        router=RegionRouter(db, settings.region, settings.routing_secret, settings.routing_peer_urls,
                            timeout=settings.routing_timeout),
    )


def claim_stores(settings: Settings, db: Database, redis) -> None:
    """Refuse another region's stores before anything reads or writes them, stamping them on first use
    (envoi/infra/region_stamp.py): RegionMismatch."""
    with db.transaction() as conn:
        region_stamp.claim_database(conn, settings.region, region_stamp.where(settings.database_url))
    region_stamp.claim_redis(redis, settings.region, region_stamp.where(settings.redis_url))


def check_stores(settings: Settings) -> None:
    """claim_stores for a process that builds its services later (gunicorn's workers), with a
    connection of its own."""
    db = Database(settings.database_url, min_size=1, max_size=1, pool_timeout=settings.db_pool_timeout,
                  transaction_pooler=settings.db_transaction_pooler)
    redis = redis_infra.client(settings.redis_url)
    try:
        claim_stores(settings, db, redis)
    finally:
        redis.close()
        db.close()


def plan_retention(settings: Settings, plans: Plans) -> dict[str, float]:
    """Event retention per plan: with billing on, each plan's log_retention_days (the plans file is the
    source); ENVOI_EVENT_RETENTION_PLANS overrides either way. Billing off (self-hosting, every account
    on the default plan) keeps the built-in table, so a free plan's one day of logs does not apply."""
    from_plans = {plan.name: plan.log_retention_days * 86400.0 for plan in plans} if settings.billing else {}
    return {**PLAN_RETENTION, **from_plans, **dict(settings.event_retention_plans)}


def build_relay(services: Services) -> Relay:
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
        suppressions=services.suppressions,
        egress=start_egress(services),
    )


def start_egress(services: Services, **overrides) -> IpEgress:
    """The relay's egress chooser for this relay host (loads the IP inventory now); `overrides` replace
    its view's options (host, policy, refresh, default_helo)."""
    from envoi.mta.delivery.egress import IpEgress

    settings = services.settings
    options = {"host": settings.relay_host, "policy": settings.warmup_policy, "refresh": settings.ips_refresh,
               "default_helo": settings.helo_name, **overrides}
    egress = IpEgress(services.ips.egress_view(**options).start(), services.metrics)
    atexit.register(egress.stop)  # record usage and hand back unspent warm-up quota when the relay exits
    return egress


def build_submission(services: Services, **overrides) -> Submission:
    """SMTP submission for `envoi smtp` (its listeners are opened by the command); `overrides` replace
    fields of its SubmissionConfig."""
    from envoi.mta.submission.server import Submission

    return Submission.from_settings(services.settings, services.intake, services.accounts, services.redis,
                                    router=services.router, template_sending=services.template_sending, **overrides)


def build_receiving(services: Services, **overrides) -> Receiving:
    """What the inbound MX does with mail for the receiving domains: their routes' actions, and posts
    to their accounts' mailing lists. `overrides` replace Receiving's options (timeout, retry_schedule,
    retry_for, keep_seconds, lists)."""
    settings = services.settings
    return Receiving(services.db, services.sealer, services.events, services.accounts, services.intake,
                     services.webhooks, public_url=settings.public_url,
                     **{"timeout": settings.webhook_timeout, "lists": services.lists, **overrides})


def build_inbound(services: Services, host: str | None = None, port: int | None = None,
                  receiving: Receiving | None = None, max_bytes: int | None = None) -> InboundServer:
    """The listener of `envoi inbound`: bounces (DSN), complaints (ARF), and mail for the receiving
    domains handed to their routes (`receiving`; build_receiving's when None)."""
    from envoi.mta.bounces import verp
    from envoi.mta.bounces.inbound import InboundServer
    from envoi.mta.bounces.service import Bounces

    settings = services.settings
    bounces = Bounces(services.db, services.events, verp_key=verp.key_from_secret(settings.secret_key),
                      previous_verp_keys=tuple(verp.key_from_secret(key) for _, key in settings.previous_secret_keys),
                      fbl_addresses=settings.fbl_addresses, bounce_domain=settings.bounce_domain,
                      suppressions=services.suppressions)
    return InboundServer(bounces, settings.inbound_bind if host is None else host,
                         settings.inbound_port if port is None else port,
                         hostname=settings.smtp_hostname or settings.helo_name,
                         max_bytes=settings.inbound_max_bytes if max_bytes is None else max_bytes,
                         metrics=services.metrics,
                         receiving=build_receiving(services) if receiving is None else receiving)


@dataclass(frozen=True)
class PeriodicTask:
    name: str
    every_seconds: float
    run: Callable[[], object]


def periodic_tasks(services: Services) -> list[PeriodicTask]:
    """What `envoi scheduler` runs: retention purges, partition upkeep, stats folding."""
    return [
        PeriodicTask("purge expired message bodies", 600, services.storage.purge_expired),
        PeriodicTask("purge expired inbound messages", 600, services.routes.purge_expired),
        PeriodicTask("events: partitions and retention", 3600, services.events.maintain),
        PeriodicTask("stats: fold pending rollups", 60, services.stats.fold),
        PeriodicTask("stats: hourly buckets into days, daily into months", 86400, services.stats.coarsen),
        PeriodicTask("purge expired webhook deliveries", 3600, services.webhooks.purge_expired),
        PeriodicTask("purge expired dashboard sessions", 3600, services.sessions.purge_expired),
        PeriodicTask("purge deleted accounts past the purge delay", 3600, services.purge.run),
        PeriodicTask("inactive accounts: warn, then purge", 86400, services.inactivity.sweep),
        PeriodicTask("bulk validation: purge expired results", 600, services.validation.purge_expired),
        PeriodicTask("bulk validation: enqueue stalled jobs again", 300, services.validation.requeue_stalled),
        PeriodicTask("domains: re-check DNS records", 60, lambda: services.accounts.recheck_domains(
            dns_targets(services.settings), services.settings.dns_resolver, services.settings.domain_recheck_interval)),
        PeriodicTask("dkim: rotate keys, sign with found ones, retire drained ones", 300,
                     DkimRotation(services.db, services.accounts, services.dkim).run),
        *(billing_tasks(services) if services.settings.stripe_secret_key else []),
    ]


def billing_tasks(services: Services) -> list[PeriodicTask]:
    """Stripe billing's sweeps: suspend past the payment grace (and lift it once paid), apply downgrades
    at their period's end, push overage to the coming invoice."""
    billing = services.billing
    return [
        PeriodicTask("billing: suspend past payment grace, reinstate when paid", 300, billing.sweep_dunning),
        PeriodicTask("billing: apply downgrades at period end", 600, billing.apply_due_downgrades),
        PeriodicTask("billing: push overage to Stripe", 3600, billing.push_all_overage),
    ]
