"""Settings: read once from the environment at an entry point, then passed down frozen.

Every key is documented here with its default; nothing below the entry points reads os.environ.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from envoi.infra.redis import sentinel_url

REGIONS = ("eu", "us")


def log_format(env: Mapping[str, str]) -> str:
    """ENVOI_LOG_FORMAT alone: logging is set up before the rest of the settings can be read."""
    value = (env.get("ENVOI_LOG_FORMAT") or "text").strip().lower()
    if value not in ("text", "json"):
        raise SettingsError(f"ENVOI_LOG_FORMAT must be text or json, not {value!r}")
    return value


class SettingsError(ValueError):
    """A setting is missing or malformed."""


class _Reading(Mapping):
    """The environment, remembering the variable read last: each setting is converted right after its
    read, so a value that does not convert is that variable's."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.last = "a setting"

    def __getitem__(self, key: str) -> str:
        self.last = key
        return self.env[key]

    def get(self, key, default=None):
        self.last = key
        return self.env.get(key, default)

    def __iter__(self):
        return iter(self.env)

    def __len__(self) -> int:
        return len(self.env)


def _seconds(value: str) -> float:
    """Parse '300', '300s', '5m', '2h', '5d' into seconds."""
    value = value.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value and value[-1] in units:
        return float(value[:-1]) * units[value[-1]]
    return float(value)


def _host_port(value: str, default_port: int) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host:
        return value, default_port
    return host, int(port)


def _secret_key(value: str | None, name: str = "ENVOI_SECRET_KEY") -> bytes:
    # No default: a well-known key would make every sealed body, DKIM key and signed link readable or
    # forgeable (and every suppressed address's lookup hash guessable) by anyone who has read this code.
    if not value:
        raise SettingsError(f"{name} is not set: give this region's key (base64 of 32 bytes, "
                            "e.g. `openssl rand -base64 32`, the same for every process of the region)")
    return _keyed(name, value)[1]


_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,32}$")  # the same rule as envoi.infra.crypto.KEY_ID


def _keyed(name: str, value: str) -> tuple[str, bytes]:
    """'id:base64' or 'base64' (base64 has no colon) -> (id or '' for the derived one, 32-byte key)."""
    kid, _, material = value.strip().rpartition(":")
    if kid and not _KEY_ID.match(kid):
        raise SettingsError(f"{name}: key id {kid!r} must be 1 to 32 of A-Z a-z 0-9 . _ -")
    try:
        key = base64.b64decode(material, validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise SettingsError(f"{name} must be base64 of exactly 32 bytes (optionally as id:base64)")
    return kid, key


def _networks(name: str, value: str) -> tuple[str, ...]:
    out = []
    for item in (x.strip() for x in value.split(",")):
        if item:
            try:
                out.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError as ex:
                raise SettingsError(f"{name}: {item!r} is not an IP address or CIDR") from ex
    return tuple(out)


def _region_map(value: str) -> dict[str, str]:
    """ "eu=a,us=b" -> {"eu": "a", "us": "b"} (unknown regions are ignored)."""
    pairs = (item.split("=", 1) for item in value.split(",") if "=" in item)
    return {k.strip().lower(): v.strip() for k, v in pairs if k.strip().lower() in REGIONS and v.strip()}


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    #: ENVOI_REGION: the region this process serves; it only ever touches that region's stores.
    region: str = "eu"
    #: ENVOI_DATABASE_URL_EU / _US, falling back to DATABASE_URL: Postgres DSN of this region.
    database_url: str = "postgresql://postgres@127.0.0.1:5432/envoi"
    #: ENVOI_DB_WRITE_DEADLINE: seconds an intake or relay-outcome transaction may take once it has its
    #: connection; past it the connection is broken (its socket shut) and the write fails, so a request
    #: answers 503 / 451 instead of waiting forever on a stuck database or network. 0 = no deadline.
    db_write_deadline: float = 15.0
    #: ENVOI_DB_STATEMENT_TIMEOUT: Postgres statement_timeout of this process's pooled connections
    #: (a statement waiting on a lock or running away is cancelled). 0 = none.
    db_statement_timeout: float = 60.0
    #: ENVOI_DB_POOL_TIMEOUT: seconds a request waits for a pooled connection (e.g. while Postgres
    #: restarts) before it fails with a 503 / 451.
    db_pool_timeout: float = 10.0
    #: ENVOI_DB_TRANSACTION_POOLER: 1 when ENVOI_DATABASE_URL goes through a transaction-mode pooler
    #: (pgbouncer `pool_mode = transaction`): no prepared statements (pgbouncer before 1.21 cannot route
    #: them), no startup `options` (set statement_timeout on the role instead:
    #: `ALTER ROLE envoi SET statement_timeout = '60s'`), no session SET. docs/operations.md.
    db_transaction_pooler: bool = False
    #: ENVOI_DATABASE_DIRECT_URL_EU / _US, falling back to ENVOI_DATABASE_DIRECT_URL: a connection straight
    #: to Postgres, bypassing a transaction pooler, for what needs a session: `envoi migrate` and the events
    #: partition upkeep (both hold a session-level advisory lock across transactions). Default: the
    #: database URL.
    database_direct_url: str = ""
    #: ENVOI_REDIS_URL_EU / _US, falling back to REDIS_URL: Redis of this region. Behind Sentinel:
    #: `redis+sentinel://[:password@]host:port,host:port/SERVICE[/db][?sentinel_password=...]` (every
    #: client then asks the sentinels for SERVICE's primary and follows a failover), or set
    #: ENVOI_REDIS_SENTINELS (_EU / _US) "host:port,host:port" and ENVOI_REDIS_SENTINEL_SERVICE (Sentinel's
    #: master name), which build that URL with the db and password of this one. docs/operations.md.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: ENVOI_SECRET_KEY: the current key, base64 of 32 bytes (`openssl rand -base64 32`), optionally
    #: named `id:base64` (id: 1-32 of A-Z a-z 0-9 . _ -; without one the id is a digest of the key). Seals
    #: message bodies, DKIM keys, webhook URL passwords and signing keys, TOTP secrets (each value records
    #: its key id), signs tracking links and VERP addresses. Required: processes refuse to start without
    #: it (`envoi up` makes one under var/ and keeps it). Rotation: docs/operations.md.
    secret_key: bytes = field(default=b"", repr=False)
    #: ENVOI_SECRET_KEY, the id before its colon: the current key's id, recorded in what it seals (empty = derived from the key).
    secret_key_id: str = ""
    #: ENVOI_PREVIOUS_SECRET_KEYS: comma list of earlier keys (`id:base64` or `base64`, as above) that
    #: still open what they sealed; nothing is sealed with them. Remove one once `envoi encryption
    #: status` shows it seals nothing (unset).
    previous_secret_keys: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    #: ENVOI_LOOKUP_KEY: base64 of 32 bytes; the HMAC key of the suppression lists' address hashes (how an
    #: address is found once it is sealed, and after it is erased). Its own key so that rotating
    #: ENVOI_SECRET_KEY leaves every lookup working; changing it makes every suppression entry unfindable.
    #: Required like ENVOI_SECRET_KEY (`envoi up` makes one under var/ and keeps it).
    lookup_key: bytes = field(default=b"", repr=False)
    #: ENVOI_PUBLIC_URL: base URL of this region's API, used in paging links (and tracking links in
    #: ENVOI_TRACKING_HOST_MODE=public_url).
    public_url: str = "http://127.0.0.1:8025"
    #: ENVOI_TRACKING_HOST_MODE: where open, click and unsubscribe links point. `domain` (Mailgun's way):
    #: each sending domain's tracking host `{web_scheme}://{web_prefix}.{domain}` (default
    #: http://email.<domain>), a CNAME to this platform answered by `envoi tracking` (or `envoi api`).
    #: `public_url`: ENVOI_PUBLIC_URL for every domain, where no such CNAME exists (`envoi up` uses it).
    tracking_host_mode: str = "domain"
    #: ENVOI_TRACKING_TLS_CERT / ENVOI_TRACKING_TLS_KEY: PEM certificate chain and private key that
    #: `envoi tracking` presents (HTTPS on its --bind); a certificate naming the tracking hosts (SANs or
    #: a wildcard). Unset: it serves plain HTTP (TLS ended by a reverse proxy, or web_scheme http).
    tracking_tls_cert: str = ""
    #: ENVOI_TRACKING_TLS_KEY: see ENVOI_TRACKING_TLS_CERT (the same file may hold both).
    tracking_tls_key: str = ""
    #: ENVOI_TRACKING_TLS_DIR: optional directory of per-host certificates for `envoi tracking`:
    #: `<host>.pem` (chain then key, e.g. email.example.com.pem), chosen by the client's SNI; a host
    #: without a file gets ENVOI_TRACKING_TLS_CERT. Read once per worker: `kill -HUP` gunicorn after a renewal.
    tracking_tls_dir: str = ""
    #: ENVOI_OTHER_REGION_URLS: "eu=https://…,us=https://…", each region's API base URL: named in wrong-region
    #: 401s, the dashboard's region switch and its answer to an email of another region (URL + /dashboard).
    region_urls: Mapping[str, str] = field(default_factory=dict)
    #: ENVOI_REGION_SMTP_HOSTS: "eu=smtp.eu.example:587,us=smtp.us.example:587", each region's SMTP
    #: submission host, named in the AUTH reply to a login of the other region.
    region_smtp_hosts: Mapping[str, str] = field(default_factory=dict)
    #: ENVOI_ROUTING_SECRET: secret shared by every region (at least 32 characters), keying the hash of a
    #: login that one region asks its peers about (an SMTP login or a dashboard email unknown here) and
    #: signing those requests. Unset: no region asks or answers; such logins get a plain failure.
    routing_secret: bytes = field(default=b"", repr=False)
    #: ENVOI_ROUTING_PEER_URLS: "us=http://10.0.2.5:8025,...", the base URL this region asks each other
    #: region's API at (private network); default: ENVOI_OTHER_REGION_URLS.
    routing_peer_urls: Mapping[str, str] = field(default_factory=dict)
    #: ENVOI_ROUTING_TIMEOUT: seconds to wait for a peer region's answer; a peer down or slow means a plain
    #: authentication failure (2).
    routing_timeout: float = 2.0
    #: ENVOI_DNS_RESOLVER: "host:port" of the resolver for MX lookups and domain verification; empty =
    #: system resolver.
    dns_resolver: tuple[str, int] | None = None
    #: ENVOI_SMTP_ROUTE: "host:port" that receives ALL outbound mail (dev sink); empty = real MX.
    smtp_route: tuple[str, int] | None = None
    #: ENVOI_MX_PORT: the remote port used when delivering to an MX (25 in production).
    remote_smtp_port: int = 25
    #: ENVOI_HELO_NAME: name announced in EHLO when the egress IP has none of its own.
    helo_name: str = "localhost"
    #: ENVOI_RETRY_SCHEDULE: comma list of delays between attempts (±10% jitter); the last repeats (hourly).
    retry_schedule: tuple[float, ...] = (60, 300, 600, 1200, 1800, 3600)
    #: ENVOI_MESSAGE_LIFETIME: give up on a recipient after this long in the queue (default 5 days).
    message_lifetime: float = 5 * 86400
    #: ENVOI_INTAKE_BATCH: most accepted messages that share one intake transaction (group commit).
    intake_batch: int = 64
    #: ENVOI_INTAKE_COMMIT_DELAY: under load, seconds an API intake commit waits for more accepts to
    #: join it (like Postgres's commit_delay; a quiet system commits at once).
    intake_commit_delay: float = 0.005
    #: ENVOI_SMTP_COMMIT_DELAY: under load, seconds the SMTP server's commit stage waits for more messages
    #: to join its batch (a quiet server commits at once). Shorter than the API's: SMTP sessions send
    #: their next message sooner, and the 2 ms batches were as large as the 5 ms ones (docs/benchmarks.md).
    smtp_commit_delay: float = 0.002
    #: ENVOI_RELAY_BATCH: recipients claimed from Postgres per relay round.
    relay_batch: int = 500
    #: ENVOI_RELAY_CLAIM_INTERVAL: while mail trickles in, seconds between claims (lets a claim gather
    #: more than one commit's recipients); an idle relay still claims at once when rung.
    relay_claim_interval: float = 0.05
    #: ENVOI_RELAY_FLUSH_DELAY: while delivery outcomes keep coming, the relay writes them at most once
    #: per this many seconds (sooner when one per connection waits; an outcome after a quiet spell is
    #: written at once). Longer: fewer, larger transactions; a crash still re-sends at most
    #: 2 x ENVOI_RELAY_CONNECTIONS messages. 0 = write whenever the writer is free.
    relay_flush_delay: float = 0.02
    #: ENVOI_RELAY_LEASE: seconds a relay's claim on a recipient lasts without renewal (renewed every
    #: quarter of it, at most every 30 s; checked once a second, so keep it >= 4 s). A relay host that dies leaves its mail to the others after
    #: this long; mail pinned to a dead host's IPs overflows to other hosts after it too (policy overflow).
    relay_lease: float = 120.0
    #: ENVOI_RELAY_CONNECTIONS: concurrent outbound SMTP sessions per relay.
    relay_connections: int = 50
    #: ENVOI_SMTP_TIMEOUT: seconds to wait on a remote SMTP server per command.
    smtp_timeout: float = 60.0
    #: ENVOI_RELAY_SIGNERS: threads that DKIM-sign for the relay (0: sign in the relay's event loop).
    relay_signers: int = 2
    #: ENVOI_SHAPING_FILE: TOML of per-destination shaping rules (default: envoi/mta/delivery/shaping.toml).
    shaping_file: str | None = None
    #: ENVOI_TLS_CA_FILE: extra CA bundle the relay trusts, besides the system's CAs, when it verifies MX
    #: and MTA-STS policy host certificates (a private CA; tests use trustme's).
    tls_ca_file: str | None = None
    #: ENVOI_MTA_STS: honour recipient domains' MTA-STS policies (RFC 8461) and collect TLS-RPT results
    #: (RFC 8460); "no" = opportunistic TLS only, as before. Not applied with ENVOI_SMTP_ROUTE.
    mta_sts: bool = True
    #: ENVOI_MTA_STS_ALLOW: comma list of CIDRs/hosts an MTA-STS policy host may resolve to despite the
    #: SSRF guard (none: private, loopback and reserved addresses are refused). Tests allow 127.0.0.0/8.
    mta_sts_allow: tuple[str, ...] = ()
    #: ENVOI_MTA_STS_PORT: the HTTPS port policies are fetched from (443; tests use their own).
    mta_sts_port: int = 443
    #: ENVOI_MTA_STS_FETCH_TIMEOUT: seconds one policy fetch may take, connection to last byte.
    mta_sts_fetch_timeout: float = 10.0
    #: ENVOI_BODY_RETENTION: how long message bodies are kept (default 3 days).
    body_retention: float = 3 * 86400
    #: ENVOI_EVENT_RETENTION: how long events are kept (default 30 days).
    event_retention: float = 30 * 86400
    #: ENVOI_EVENT_RETENTION_PLANS: per-plan event retention "plan=30d,..." over the built-in
    #: trial=3d, scale=60d, enterprise=90d; other plans keep ENVOI_EVENT_RETENTION.
    event_retention_plans: Mapping[str, float] = field(default_factory=dict)
    #: ENVOI_STRIPE_SECRET_KEY: the Stripe secret API key (sk_…); never logged. Setting it turns billing on
    #: (unless ENVOI_BILLING says otherwise). Unset: no Stripe.
    stripe_secret_key: str = field(default="", repr=False)
    #: ENVOI_BILLING: on/off: plans' quotas at accept and billing. Default: on exactly when
    #: ENVOI_STRIPE_SECRET_KEY is set; off (a single-tenant self-hosted region) there are no quotas.
    billing: bool = False
    #: ENVOI_BILLING_PLANS: path of the plans TOML (default: the packaged envoi/billing/plans.toml); see
    #: docs/billing.md. A file that cannot be used stops the process at start.
    billing_plans: str | None = None
    #: ENVOI_TRUSTED_PROXIES: comma list of CIDRs of this region's reverse proxies; a request from one of them is
    #: taken to come from the right-most untrusted address of its X-Forwarded-For (tracking links' rate
    #: limit and recorded IP). Empty (default): X-Forwarded-For is ignored.
    trusted_proxies: tuple[str, ...] = ()
    #: ENVOI_STREAM_MAX_CLIENTS: live event streams (SSE) one API process serves at once (default 12).
    stream_max_clients: int = 12
    #: ENVOI_STREAM_MAX_SECONDS: a live stream response ends after this long; clients resume (300).
    stream_max_seconds: float = 300.0
    #: ENVOI_MAX_MESSAGE_BYTES: largest accepted message (Mailgun: 25 MB).
    max_message_bytes: int = 25 * 1024 * 1024
    #: ENVOI_METRICS: expose /metrics (default on).
    metrics_enabled: bool = True
    #: PROMETHEUS_MULTIPROC_DIR: where a process group (gunicorn's workers, `--processes N`) keeps its metrics
    #: files, one directory per group, emptied at its start (unset: a temporary one, removed at exit).
    metrics_multiprocess_dir: str | None = None
    #: ENVOI_METRICS_HOST: address each process's `--metrics-port` listens on (127.0.0.1): a private address
    #: Prometheus reaches, never the public one. /metrics is only ever served there (or on `--metrics-bind`).
    metrics_host: str = "127.0.0.1"
    #: ENVOI_API_SERVER: the HTTP server of `envoi api` and `envoi tracking`: "granian" (the default: a Rust
    #: HTTP server calling the WSGI app from its threads, about a fifth of gunicorn's CPU per request) or
    #: "gunicorn" (gthread workers, the server before). Granian cannot choose a certificate by SNI: `envoi
    #: tracking` with ENVOI_TRACKING_TLS_DIR runs under gunicorn whatever this says. docs/benchmarks.md
    #: (issue 20) has the figures and the differences on the wire.
    api_server: str = "granian"
    #: ENVOI_LOG_FORMAT: "text" (one human line per record) or "json" (one JSON object per line: ts, level,
    #: process, region, logger, message, and message_id when the record is about one message).
    log_format: str = "text"
    #: ENVOI_RELAY_HOST: the host this relay runs on; it only binds egress IPs of this host (hostname).
    relay_host: str = field(default_factory=socket.gethostname)
    #: ENVOI_WARMUP_POLICY: when every warming IP is at its daily cap: overflow (to the shared pool) or wait.
    warmup_policy: str = "overflow"
    #: ENVOI_WARMUP_PLAN: warm-up stages "DAYSxCAP,…" (daily caps rising over 30 days by default).
    warmup_plan: str = "2x50,2x100,2x300,2x500,2x1000,2x2000,2x5000,3x10000,3x20000,3x40000,3x70000,4x100000"
    #: ENVOI_IPS_REFRESH: seconds between refreshes of a relay's in-memory IP inventory and warm-up quota (5).
    ips_refresh: float = 5.0
    #: ENVOI_WEBHOOK_ALLOW: comma list of CIDRs/hosts webhooks may reach despite the SSRF guard (none).
    webhook_allow: tuple[str, ...] = ()
    #: ENVOI_WEBHOOK_RETRY_SCHEDULE: delays between webhook attempts; the last repeats (5m,10m,15m,1h,2h,4h).
    webhook_retry_schedule: tuple[float, ...] = (300, 600, 900, 3600, 7200, 14400)
    #: ENVOI_WEBHOOK_RETRY_FOR: keep retrying a failing webhook at least this long (8h).
    webhook_retry_for: float = 8 * 3600
    #: ENVOI_WEBHOOK_TIMEOUT: seconds to wait for a webhook endpoint (connect + response) (10).
    webhook_timeout: float = 10.0
    #: ENVOI_WEBHOOK_PER_ENDPOINT: webhook deliveries in flight at once per endpoint host, over all
    #: dispatcher processes (32: an endpoint answering in 30 ms takes ~1,000/s; a dead one holds 32 slots).
    webhook_per_endpoint: int = 32
    #: ENVOI_WEBHOOK_PER_ACCOUNT: webhook deliveries in flight at once per account, all hosts (64).
    webhook_per_account: int = 64
    #: ENVOI_WEBHOOK_LEASE: seconds a dispatcher owns the deliveries it claimed; a killed dispatcher's
    #: rows are taken again after this (60; keep above twice ENVOI_WEBHOOK_TIMEOUT).
    webhook_lease: float = 60.0
    #: ENVOI_WEBHOOK_INFLIGHT: webhook deliveries one dispatcher process holds in memory at most (claimed,
    #: being sent or their result being written); the rest of any backlog waits in Postgres (512).
    webhook_inflight: int = 512
    #: ENVOI_WEBHOOK_TRACE: seconds; > 0: the dispatcher logs each request slower than this with its stages
    #: (wait for a connection slot, connect, send, answer), claims and result writes slower than this, rows
    #: claimed this long after their commit, rounds with no room, and event-loop stalls with their cause (the
    #: loop thread's and the process's CPU over the stall, the garbage collector's time, the loop's stack
    #: sampled during it), plus a summary of the collector's passes every 10 s (0: off; costs CPU).
    webhook_trace: float = 0.0
    #: ENVOI_VALIDATION_DNS_TIMEOUT: seconds an address validation waits for DNS (MX, then A/AAAA) before it
    #: answers `unknown` (5).
    validation_dns_timeout: float = 5.0
    #: ENVOI_VALIDATION_CONCURRENCY: single validations one account may have running at once in one API
    #: process; more get Mailgun's 429 (10).
    validation_concurrency: int = 10
    #: ENVOI_VALIDATION_RESULTS_TTL: bulk validation jobs and their results (personal data) are deleted
    #: this long after the job was created (30d).
    validation_results_ttl: float = 30 * 86400.0
    #: ENVOI_VALIDATION_BATCH: addresses a worker validates per RQ job of a bulk validation; progress is
    #: committed after each batch (200).
    validation_batch: int = 200
    #: ENVOI_SMTP_BIND: address `envoi smtp` listens on for submission (127.0.0.1; 0.0.0.0 in production).
    smtp_bind: str = "127.0.0.1"
    #: ENVOI_SMTP_SUBMISSION_PORT: SMTP submission port with STARTTLS (587; 0 disables).
    smtp_submission_port: int = 587
    #: ENVOI_SMTPS_PORT: SMTP submission port with implicit TLS (465; 0 disables).
    smtps_port: int = 465
    #: ENVOI_TLS_CERT: PEM certificate chain for submission TLS (unset: a generated dev certificate).
    tls_cert: str | None = None
    #: ENVOI_TLS_KEY: PEM private key of ENVOI_TLS_CERT.
    tls_key: str | None = None
    #: ENVOI_SMTP_HOSTNAME: name in the submission greeting and EHLO reply (default: ENVOI_HELO_NAME).
    smtp_hostname: str | None = None
    #: ENVOI_SMTP_MAX_RECIPIENTS: recipients per submitted message; more get 452 4.5.3 (1000).
    smtp_max_recipients: int = 1000
    #: ENVOI_SMTP_AUTH_MAX_FAILURES: failed AUTHs per (client address, login) pair per window before that
    #: address gets 454 for that login; other addresses still log in (5).
    smtp_auth_max_failures: int = 5
    #: ENVOI_SMTP_AUTH_MAX_FAILURES_IP: failed AUTHs per client address (IPv6: per /64), any login, per window
    #: before that address gets 454 for every login (20).
    smtp_auth_max_failures_ip: int = 20
    #: ENVOI_SMTP_AUTH_WINDOW: the failed-AUTH counting window (15m).
    smtp_auth_window: float = 900.0
    #: ENVOI_STRIPE_PUBLISHABLE_KEY: Stripe's publishable key (pk_...), for Stripe.js in the dashboard.
    stripe_publishable_key: str = ""
    #: ENVOI_STRIPE_JS_URL: where the billing page loads Stripe.js from, for card entry (Stripe's own
    #: https://js.stripe.com/v3/; a stand-in such as localstripe's fake in tests). Only with billing on; the
    #: card page's Content-Security-Policy allows this URL's origin.
    stripe_js_url: str = "https://js.stripe.com/v3/"
    #: ENVOI_STRIPE_WEBHOOK_SECRET: the signing secret (whsec_...) of the Stripe webhook endpoint
    #: POST /v1/billing/stripe/webhook; unset, every Stripe webhook is refused.
    stripe_webhook_secret: str = field(default="", repr=False)
    #: ENVOI_STRIPE_API_BASE: Stripe's API address; only for a Stripe stand-in such as localstripe in tests.
    stripe_api_base: str | None = None
    #: ENVOI_BILLING_GRACE: after a failed payment, how long an account keeps sending before it is
    #: suspended (7d).
    billing_grace: float = 7 * 86400.0
    #: ENVOI_ACCOUNT_PURGE_DELAY: a closed (deleted) account's data is purged this long after it was closed
    #: (30d); more than 90d is refused at startup (the privacy policy's promise).
    account_purge_delay: float = 30 * 86400.0
    #: ENVOI_INACTIVE_ACCOUNT_AFTER: an account with no sign-in and no send for this long is warned by mail
    #: that it will be purged (3 years: 1095d).
    inactive_account_after: float = 1095 * 86400.0
    #: ENVOI_INACTIVE_ACCOUNT_NOTICE: how long after that warning an account still inactive is purged (30d).
    inactive_account_notice: float = 30 * 86400.0
    #: ENVOI_PLATFORM_SENDER: the address platform notices (the inactive-account warning) are sent from,
    #: through Envoi itself; its domain must be a verified domain of this region. Unset: no warning is sent
    #: (logged), and so no inactive account is purged.
    platform_sender: str = ""
    #: ENVOI_SESSION_IDLE: a dashboard session ends after this long without a request (30m).
    session_idle: float = 1800.0
    #: ENVOI_SESSION_MAX: a dashboard session ends this long after sign-in, however busy (12h).
    session_max: float = 43200.0
    #: ENVOI_LOGIN_MAX_FAILURES: failed dashboard sign-ins per email per window before that email gets 429 (5).
    login_max_failures: int = 5
    #: ENVOI_LOGIN_MAX_FAILURES_IP: failed dashboard sign-ins per client address (IPv6: per /64) per window,
    #: any email, before that address gets 429 (20).
    login_max_failures_ip: int = 20
    #: ENVOI_LOGIN_WINDOW: the failed sign-in counting window (15m).
    login_window: float = 900.0
    #: ENVOI_ALLOW_FOREIGN_FROM (older name ENVOI_SMTP_ALLOW_FOREIGN_FROM): let the API and SMTP send
    #: From addresses outside the sending domain and its subdomains, as Mailgun does (off).
    allow_foreign_from: bool = False
    #: ENVOI_SMTP_MAX_CONNECTIONS: open submission connections per `envoi smtp` process; more get 421 (2000).
    smtp_max_connections: int = 2000
    #: ENVOI_SMTP_MAX_CONNECTIONS_PER_IP: open connections per client address (IPv6: per /64) per process (50).
    smtp_max_connections_per_ip: int = 50
    #: ENVOI_SMTP_PREAUTH_TIMEOUT: idle seconds before a connection that has not authenticated is closed (30).
    smtp_preauth_timeout: float = 30.0
    #: ENVOI_SMTP_IDLE_TIMEOUT: idle seconds before an authenticated connection is closed (300, RFC 5321 4.5.3.2.7).
    smtp_idle_timeout: float = 300.0
    #: ENVOI_INBOUND_BIND: address `envoi inbound` (the inbound MX: DSN/ARF reports and mail for the
    #: receiving domains' routes) listens on (127.0.0.1; 0.0.0.0 in prod).
    inbound_bind: str = "127.0.0.1"
    #: ENVOI_INBOUND_PORT: port of the inbound MX (2526; 25 behind the domains' MX records).
    inbound_port: int = 2526
    #: ENVOI_FBL_ADDRESSES: comma list where ARF reports arrive: "fbl" = fbl@ any of our domains, or full
    #: addresses (fbl@envoi.example) (default "fbl").
    fbl_addresses: tuple[str, ...] = ("fbl",)
    #: ENVOI_BOUNCE_DOMAIN: domain of VERP return paths instead of each sending domain (unset).
    bounce_domain: str | None = None
    #: ENVOI_INBOUND_MAX_BYTES: largest message the inbound MX accepts, reports and routed mail alike
    #: (32 MB); larger gets 552 5.3.4 at DATA (and is announced in EHLO SIZE).
    inbound_max_bytes: int = 32 * 1024 * 1024
    #: ENVOI_INBOUND_MX_HOSTS: comma list of the inbound MX host names customers' receiving domains point
    #: their MX records at (each receiving domain's receiving_dns_records; unset: this region receives no
    #: mail, and no domain is asked for MX records).
    inbound_mx_hosts: tuple[str, ...] = ()
    #: ENVOI_SPF_INCLUDE: the host name customers' SPF records include (`v=spf1 include:<it> ~all`): a TXT
    #: record the operator publishes listing this region's egress IPs. Unset: no SPF record is asked for
    #: and verification rests on the DKIM record alone.
    spf_include: str | None = None
    #: ENVOI_TRACKING_HOST: the host each domain's tracking CNAME (`<web_prefix>.<domain>`) points at, one
    #: serving this region's open/click/unsubscribe links (default: the host of ENVOI_PUBLIC_URL when it
    #: is a name; none for an IP address or localhost, and then no CNAME is asked for).
    tracking_host: str | None = None
    #: ENVOI_DMARC_RUA: mailto: address for aggregate reports named in the DMARC record suggested to every
    #: domain (`v=DMARC1; p=none; rua=...`; unset: the suggestion has no rua).
    dmarc_rua: str | None = None
    #: ENVOI_DOMAIN_RECHECK_INTERVAL: seconds between DNS re-checks of each domain by `envoi scheduler`
    #: (3600); a verified record found missing is recorded in the audit log, and a missing SPF or DKIM
    #: record makes the domain unverified again.
    domain_recheck_interval: float = 3600.0

    @property
    def redis_wakeup_key(self) -> str:
        return f"envoi:{self.region}:relay:wakeup"

    def metrics_address(self, bind: str, port: int) -> str:
        """Where a process serves /metrics: --metrics-bind, else --metrics-port on ENVOI_METRICS_HOST ("": off)."""
        if bind:
            return bind
        host = f"[{self.metrics_host}]" if ":" in self.metrics_host else self.metrics_host
        return f"{host}:{port}" if port else ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        reading = _Reading(os.environ if env is None else env)
        try:
            return cls._from_env(reading)
        except SettingsError:
            raise
        except ValueError as ex:  # a number or duration that is not one: name the variable, no traceback
            raise SettingsError(f"{reading.last}: {ex}") from ex

    @classmethod
    def _from_env(cls, env: Mapping[str, str]) -> Settings:
        region = env.get("ENVOI_REGION", "eu").lower()
        if region not in REGIONS:
            raise SettingsError(f"ENVOI_REGION must be one of {REGIONS}, not {region!r}")
        up = region.upper()
        values: dict = {"region": region}

        def pick(*names: str) -> str | None:
            for name in names:
                if env.get(name):
                    return env[name]
            return None

        if v := pick(f"ENVOI_DATABASE_URL_{up}", "DATABASE_URL"):
            values["database_url"] = v
        if v := env.get("ENVOI_DB_WRITE_DEADLINE"):
            values["db_write_deadline"] = _seconds(v)
        if v := env.get("ENVOI_DB_STATEMENT_TIMEOUT"):
            values["db_statement_timeout"] = _seconds(v)
        if v := env.get("ENVOI_DB_POOL_TIMEOUT"):
            values["db_pool_timeout"] = _seconds(v)
        if v := env.get("ENVOI_DB_TRANSACTION_POOLER"):
            values["db_transaction_pooler"] = _bool(v)
        if v := pick(f"ENVOI_DATABASE_DIRECT_URL_{up}", "ENVOI_DATABASE_DIRECT_URL"):
            values["database_direct_url"] = v
        if v := pick(f"ENVOI_REDIS_URL_{up}", "REDIS_URL"):
            values["redis_url"] = v
        if v := pick(f"ENVOI_REDIS_SENTINELS_{up}", "ENVOI_REDIS_SENTINELS"):
            service = env.get("ENVOI_REDIS_SENTINEL_SERVICE", "").strip()
            if not service:
                raise SettingsError("ENVOI_REDIS_SENTINELS is set but ENVOI_REDIS_SENTINEL_SERVICE is not:"
                                    " give Sentinel's master name (e.g. mymaster)")
            try:
                values["redis_url"] = sentinel_url(v, service, values.get("redis_url", ""))
            except ValueError as ex:
                raise SettingsError(f"ENVOI_REDIS_SENTINELS must be host:port,host:port, not {v!r}") from ex
        values["secret_key"] = _secret_key(env.get("ENVOI_SECRET_KEY"))
        values["secret_key_id"] = _keyed("ENVOI_SECRET_KEY", env["ENVOI_SECRET_KEY"])[0]
        if v := env.get("ENVOI_PREVIOUS_SECRET_KEYS"):
            values["previous_secret_keys"] = tuple(_keyed("ENVOI_PREVIOUS_SECRET_KEYS", item)
                                                   for item in v.split(",") if item.strip())
        values["lookup_key"] = _secret_key(env.get("ENVOI_LOOKUP_KEY"), "ENVOI_LOOKUP_KEY")
        if v := env.get("ENVOI_PUBLIC_URL"):
            values["public_url"] = v.rstrip("/")
        if v := env.get("ENVOI_TRACKING_HOST_MODE"):
            if v not in ("domain", "public_url"):
                raise SettingsError(f"ENVOI_TRACKING_HOST_MODE must be domain or public_url, not {v!r}")
            values["tracking_host_mode"] = v
        for name in ("cert", "key", "dir"):
            if v := env.get(f"ENVOI_TRACKING_TLS_{name.upper()}"):
                values[f"tracking_tls_{name}"] = v
        if bool(values.get("tracking_tls_cert")) != bool(values.get("tracking_tls_key")):
            raise SettingsError("ENVOI_TRACKING_TLS_CERT and ENVOI_TRACKING_TLS_KEY go together: set both or neither")
        if v := env.get("ENVOI_OTHER_REGION_URLS"):
            values["region_urls"] = dict(item.split("=", 1) for item in v.split(",") if "=" in item)
        if v := env.get("ENVOI_REGION_SMTP_HOSTS"):
            values["region_smtp_hosts"] = _region_map(v)
        if v := env.get("ENVOI_ROUTING_SECRET"):
            if len(v) < 32:
                raise SettingsError("ENVOI_ROUTING_SECRET must be at least 32 characters "
                                    "(e.g. `openssl rand -base64 32`), the same in every region")
            values["routing_secret"] = v.encode()
        if v := pick("ENVOI_ROUTING_PEER_URLS", "ENVOI_OTHER_REGION_URLS"):
            values["routing_peer_urls"] = {r: u.rstrip("/") for r, u in _region_map(v).items() if r != region}
        if v := env.get("ENVOI_ROUTING_TIMEOUT"):
            values["routing_timeout"] = _seconds(v)
        if v := env.get("ENVOI_DNS_RESOLVER"):
            values["dns_resolver"] = _host_port(v, 53)
        if v := env.get("ENVOI_SMTP_ROUTE"):
            values["smtp_route"] = _host_port(v, 25)
        if v := env.get("ENVOI_MX_PORT"):
            values["remote_smtp_port"] = int(v)
        if v := env.get("ENVOI_HELO_NAME"):
            values["helo_name"] = v
        if v := env.get("ENVOI_RETRY_SCHEDULE"):
            values["retry_schedule"] = tuple(_seconds(x) for x in v.split(",") if x.strip())
        if v := env.get("ENVOI_MESSAGE_LIFETIME"):
            values["message_lifetime"] = _seconds(v)
        if v := env.get("ENVOI_INTAKE_BATCH"):
            values["intake_batch"] = int(v)
        if v := env.get("ENVOI_INTAKE_COMMIT_DELAY"):
            values["intake_commit_delay"] = _seconds(v)
        if v := env.get("ENVOI_SMTP_COMMIT_DELAY"):
            values["smtp_commit_delay"] = _seconds(v)
        if v := env.get("ENVOI_RELAY_BATCH"):
            values["relay_batch"] = int(v)
        if v := env.get("ENVOI_RELAY_CLAIM_INTERVAL"):
            values["relay_claim_interval"] = _seconds(v)
        if v := env.get("ENVOI_RELAY_LEASE"):
            values["relay_lease"] = _seconds(v)
        if v := env.get("ENVOI_RELAY_FLUSH_DELAY"):
            values["relay_flush_delay"] = _seconds(v)
        if v := env.get("ENVOI_RELAY_CONNECTIONS"):
            values["relay_connections"] = int(v)
        if v := env.get("ENVOI_SMTP_TIMEOUT"):
            values["smtp_timeout"] = _seconds(v)
        if v := env.get("ENVOI_RELAY_SIGNERS"):
            values["relay_signers"] = int(v)
        if v := env.get("ENVOI_SHAPING_FILE"):
            values["shaping_file"] = v
        if v := env.get("ENVOI_TLS_CA_FILE"):
            values["tls_ca_file"] = v
        if v := env.get("ENVOI_MTA_STS"):
            values["mta_sts"] = _bool(v)
        if v := env.get("ENVOI_MTA_STS_ALLOW"):
            values["mta_sts_allow"] = tuple(x.strip() for x in v.split(",") if x.strip())
        if v := env.get("ENVOI_MTA_STS_PORT"):
            values["mta_sts_port"] = int(v)
        if v := env.get("ENVOI_MTA_STS_FETCH_TIMEOUT"):
            values["mta_sts_fetch_timeout"] = _seconds(v)
        if v := env.get("ENVOI_BODY_RETENTION"):
            values["body_retention"] = _seconds(v)
        if v := env.get("ENVOI_EVENT_RETENTION"):
            values["event_retention"] = _seconds(v)
        if v := env.get("ENVOI_EVENT_RETENTION_PLANS"):
            values["event_retention_plans"] = {p.split("=", 1)[0].strip(): _seconds(p.split("=", 1)[1])
                                               for p in v.split(",") if "=" in p}
        if v := env.get("ENVOI_TRUSTED_PROXIES"):
            values["trusted_proxies"] = _networks("ENVOI_TRUSTED_PROXIES", v)
        if v := env.get("ENVOI_STREAM_MAX_CLIENTS"):
            values["stream_max_clients"] = int(v)
        if v := env.get("ENVOI_STREAM_MAX_SECONDS"):
            values["stream_max_seconds"] = _seconds(v)
        if v := env.get("ENVOI_MAX_MESSAGE_BYTES"):
            values["max_message_bytes"] = int(v)
        if v := env.get("ENVOI_METRICS"):
            values["metrics_enabled"] = _bool(v)
        if v := env.get("PROMETHEUS_MULTIPROC_DIR"):
            values["metrics_multiprocess_dir"] = v
        if v := env.get("ENVOI_METRICS_HOST"):
            values["metrics_host"] = v
        values["log_format"] = log_format(env)
        if v := env.get("ENVOI_API_SERVER"):
            values["api_server"] = v.strip().lower()
            if values["api_server"] not in ("gunicorn", "granian"):
                raise SettingsError(f"ENVOI_API_SERVER must be gunicorn or granian, not {v!r}")
        if v := env.get("ENVOI_RELAY_HOST"):
            values["relay_host"] = v
        if v := env.get("ENVOI_WARMUP_POLICY"):
            values["warmup_policy"] = v.strip().lower()
        if v := env.get("ENVOI_WARMUP_PLAN"):
            values["warmup_plan"] = v
        if v := env.get("ENVOI_IPS_REFRESH"):
            values["ips_refresh"] = _seconds(v)
        if v := env.get("ENVOI_WEBHOOK_ALLOW"):
            values["webhook_allow"] = tuple(x.strip() for x in v.split(",") if x.strip())
        if v := env.get("ENVOI_WEBHOOK_RETRY_SCHEDULE"):
            values["webhook_retry_schedule"] = tuple(_seconds(x) for x in v.split(",") if x.strip())
        if v := env.get("ENVOI_WEBHOOK_RETRY_FOR"):
            values["webhook_retry_for"] = _seconds(v)
        if v := env.get("ENVOI_WEBHOOK_TIMEOUT"):
            values["webhook_timeout"] = _seconds(v)
        if v := env.get("ENVOI_WEBHOOK_PER_ENDPOINT"):
            values["webhook_per_endpoint"] = int(v)
        if v := env.get("ENVOI_WEBHOOK_PER_ACCOUNT"):
            values["webhook_per_account"] = int(v)
        if v := env.get("ENVOI_WEBHOOK_LEASE"):
            values["webhook_lease"] = _seconds(v)
        if v := env.get("ENVOI_WEBHOOK_INFLIGHT"):
            values["webhook_inflight"] = int(v)
        if v := env.get("ENVOI_WEBHOOK_TRACE"):
            values["webhook_trace"] = _seconds(v)
        if v := env.get("ENVOI_VALIDATION_DNS_TIMEOUT"):
            values["validation_dns_timeout"] = _seconds(v)
        if v := env.get("ENVOI_VALIDATION_CONCURRENCY"):
            values["validation_concurrency"] = int(v)
        if v := env.get("ENVOI_VALIDATION_RESULTS_TTL"):
            values["validation_results_ttl"] = _seconds(v)
        if v := env.get("ENVOI_VALIDATION_BATCH"):
            values["validation_batch"] = int(v)
        if v := env.get("ENVOI_SMTP_BIND"):
            values["smtp_bind"] = v
        if v := env.get("ENVOI_SMTP_SUBMISSION_PORT"):
            values["smtp_submission_port"] = int(v)
        if v := env.get("ENVOI_SMTPS_PORT"):
            values["smtps_port"] = int(v)
        if v := env.get("ENVOI_TLS_CERT"):
            values["tls_cert"] = v
        if v := env.get("ENVOI_TLS_KEY"):
            values["tls_key"] = v
        if v := env.get("ENVOI_SMTP_HOSTNAME"):
            values["smtp_hostname"] = v
        if v := env.get("ENVOI_SMTP_MAX_RECIPIENTS"):
            values["smtp_max_recipients"] = int(v)
        if v := env.get("ENVOI_SMTP_AUTH_MAX_FAILURES"):
            values["smtp_auth_max_failures"] = int(v)
        if v := env.get("ENVOI_SMTP_AUTH_MAX_FAILURES_IP"):
            values["smtp_auth_max_failures_ip"] = int(v)
        if v := env.get("ENVOI_SMTP_AUTH_WINDOW"):
            values["smtp_auth_window"] = _seconds(v)
        if v := env.get("ENVOI_STRIPE_PUBLISHABLE_KEY"):
            values["stripe_publishable_key"] = v
        if v := env.get("ENVOI_STRIPE_JS_URL", "").strip():
            values["stripe_js_url"] = v
        if v := env.get("ENVOI_STRIPE_WEBHOOK_SECRET"):
            values["stripe_webhook_secret"] = v
        if v := env.get("ENVOI_STRIPE_API_BASE"):
            values["stripe_api_base"] = v
        if v := env.get("ENVOI_BILLING_GRACE"):
            values["billing_grace"] = _seconds(v)
        if v := env.get("ENVOI_ACCOUNT_PURGE_DELAY"):
            values["account_purge_delay"] = _seconds(v)
        if v := env.get("ENVOI_INACTIVE_ACCOUNT_AFTER"):
            values["inactive_account_after"] = _seconds(v)
        if v := env.get("ENVOI_INACTIVE_ACCOUNT_NOTICE"):
            values["inactive_account_notice"] = _seconds(v)
        if v := env.get("ENVOI_PLATFORM_SENDER", "").strip():
            values["platform_sender"] = v.lower()
        if v := env.get("ENVOI_SESSION_IDLE"):
            values["session_idle"] = _seconds(v)
        if v := env.get("ENVOI_SESSION_MAX"):
            values["session_max"] = _seconds(v)
        if v := env.get("ENVOI_LOGIN_MAX_FAILURES"):
            values["login_max_failures"] = int(v)
        if v := env.get("ENVOI_LOGIN_MAX_FAILURES_IP"):
            values["login_max_failures_ip"] = int(v)
        if v := env.get("ENVOI_LOGIN_WINDOW"):
            values["login_window"] = _seconds(v)
        if v := env.get("ENVOI_ALLOW_FOREIGN_FROM", env.get("ENVOI_SMTP_ALLOW_FOREIGN_FROM")):
            values["allow_foreign_from"] = _bool(v)
        if v := env.get("ENVOI_SMTP_MAX_CONNECTIONS"):
            values["smtp_max_connections"] = int(v)
        if v := env.get("ENVOI_SMTP_MAX_CONNECTIONS_PER_IP"):
            values["smtp_max_connections_per_ip"] = int(v)
        if v := env.get("ENVOI_SMTP_PREAUTH_TIMEOUT"):
            values["smtp_preauth_timeout"] = _seconds(v)
        if v := env.get("ENVOI_SMTP_IDLE_TIMEOUT"):
            values["smtp_idle_timeout"] = _seconds(v)
        if v := env.get("ENVOI_INBOUND_BIND"):
            values["inbound_bind"] = v
        if v := env.get("ENVOI_INBOUND_PORT"):
            values["inbound_port"] = int(v)
        if v := env.get("ENVOI_FBL_ADDRESSES"):
            values["fbl_addresses"] = tuple(x.strip().lower() for x in v.split(",") if x.strip())
        if v := env.get("ENVOI_BOUNCE_DOMAIN"):
            values["bounce_domain"] = v.strip().lower()
        if v := env.get("ENVOI_INBOUND_MAX_BYTES"):
            values["inbound_max_bytes"] = int(v)
        if v := env.get("ENVOI_INBOUND_MX_HOSTS"):
            values["inbound_mx_hosts"] = tuple(x.strip().lower().rstrip(".") for x in v.split(",") if x.strip())
        if v := env.get("ENVOI_SPF_INCLUDE"):
            values["spf_include"] = v.strip().lower().rstrip(".")
        if v := env.get("ENVOI_TRACKING_HOST"):
            values["tracking_host"] = v.strip().lower().rstrip(".")
        if v := env.get("ENVOI_DMARC_RUA"):
            values["dmarc_rua"] = v.strip() if v.strip().startswith("mailto:") else f"mailto:{v.strip()}"
        if v := env.get("ENVOI_DOMAIN_RECHECK_INTERVAL"):
            values["domain_recheck_interval"] = _seconds(v)
        values["stripe_secret_key"] = env.get("ENVOI_STRIPE_SECRET_KEY", "").strip()
        v = env.get("ENVOI_BILLING", "").strip()
        values["billing"] = _bool(v) if v else bool(values["stripe_secret_key"])
        if v := env.get("ENVOI_BILLING_PLANS", "").strip():
            values["billing_plans"] = v
        return cls(**values)

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)


def documentation() -> str:
    """docs/settings.md, built from the `#:` comments above each field (the single source)."""
    import inspect
    import re

    lines = ["# Settings", "", "Read once from the environment by each process's entry point",
             "(`envoi/infra/settings.py`). Generated by `python -m envoi.infra.settings`; a test keeps it current.",
             "", "| variable | meaning (default) |", "| --- | --- |"]
    block: list[str] = []
    for line in inspect.getsource(Settings).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            block.append(stripped[2:].strip())
            continue
        if block and re.match(r"^\w+:", stripped):
            text = " ".join(block)
            name, _, meaning = text.partition(": ")
            lines.append(f"| `{name}` | {meaning.replace('|', '/')} |")
        block = []
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(documentation(), end="")
