-- Events out: webhooks (endpoints, outbox, attempts), signing keys, suppression lists, tracking settings.

-- One signing key per account, sealed with the region key (never stored in the clear, never an API key).
CREATE TABLE webhook_signing_keys (
    account_id  bigint PRIMARY KEY REFERENCES accounts ON DELETE CASCADE,
    key_sealed  bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Mailgun's v3 model: up to 3 URLs per (domain, event type). v4 is a view of the same rows by URL.
CREATE TABLE webhooks (
    id          bigserial PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    domain_id   bigint NOT NULL REFERENCES domains ON DELETE CASCADE,
    event_type  text NOT NULL,
    url         text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (domain_id, event_type, url)
);

-- The outbox: one row per (event, URL), written in the same transaction as the event. Postgres is the
-- truth; RQ only carries "deliver row N now". leased_until = handed to RQ; running_until = a job is
-- calling the endpoint right now.
CREATE TABLE webhook_deliveries (
    id               bigserial PRIMARY KEY,
    account_id       bigint NOT NULL,
    domain_id        bigint NOT NULL,
    event_type       text NOT NULL,
    url              text NOT NULL,
    event_id         text NOT NULL,
    payload          jsonb NOT NULL,               -- the event item, as the events API returns it
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'rejected', 'failed')),
    attempts         int NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    leased_until     timestamptz,
    running_until    timestamptz,
    last_status      int,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_domain ON webhook_deliveries (domain_id, event_type, id);

CREATE TABLE webhook_attempts (
    id           bigserial PRIMARY KEY,
    delivery_id  bigint NOT NULL REFERENCES webhook_deliveries ON DELETE CASCADE,
    domain_id    bigint NOT NULL,
    attempt_no   int NOT NULL,
    status_code  int,                               -- NULL when no HTTP answer (refused, timeout, SSRF)
    error        text,
    latency_ms   int NOT NULL,
    response     text NOT NULL DEFAULT '',          -- first 1 KB of the body
    outcome      text NOT NULL,                     -- delivered | retry | rejected | failed
    attempted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
CREATE INDEX webhook_attempts_domain ON webhook_attempts (domain_id, id);

-- Suppression lists, per domain (Mailgun). Addresses are stored lower-case.
CREATE TABLE suppress_bounces (
    domain_id   bigint NOT NULL REFERENCES domains ON DELETE CASCADE,
    address     text NOT NULL,
    code        text NOT NULL DEFAULT '550',
    error       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain_id, address)
);

CREATE TABLE suppress_unsubscribes (
    domain_id   bigint NOT NULL REFERENCES domains ON DELETE CASCADE,
    address     text NOT NULL,
    tags        text[] NOT NULL DEFAULT '{*}',      -- '*' = every message of the domain
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain_id, address)
);

CREATE TABLE suppress_complaints (
    domain_id   bigint NOT NULL REFERENCES domains ON DELETE CASCADE,
    address     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain_id, address)
);

CREATE TABLE suppress_whitelists (
    domain_id   bigint NOT NULL REFERENCES domains ON DELETE CASCADE,
    value       text NOT NULL,                      -- an address or a domain name
    type        text NOT NULL CHECK (type IN ('address', 'domain')),
    reason      text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain_id, value)
);

CREATE TABLE tracking_settings (
    domain_id        bigint PRIMARY KEY REFERENCES domains ON DELETE CASCADE,
    open             boolean NOT NULL DEFAULT false,
    click            text NOT NULL DEFAULT 'no' CHECK (click IN ('yes', 'no', 'htmlonly')),
    unsubscribe      boolean NOT NULL DEFAULT false,
    html_footer      text NOT NULL DEFAULT '',
    text_footer      text NOT NULL DEFAULT '',
    updated_at       timestamptz NOT NULL DEFAULT now()
);
