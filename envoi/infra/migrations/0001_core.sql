-- Core schema: accounts, domains, keys, credentials, messages, the per-recipient schedule, events.

CREATE TABLE accounts (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    region      text NOT NULL CHECK (region IN ('eu', 'us')),
    plan        text NOT NULL DEFAULT 'free',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE domains (
    id                  bigserial PRIMARY KEY,
    account_id          bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    name                text NOT NULL UNIQUE,
    state               text NOT NULL DEFAULT 'unverified',
    type                text NOT NULL DEFAULT 'custom',
    dkim_selector       text NOT NULL,
    dkim_private_key    bytea NOT NULL,          -- sealed with the region key
    dkim_public_key     text NOT NULL,           -- base64 DER, the p= of the TXT record
    dkim_key_size       int NOT NULL,
    spam_action         text NOT NULL DEFAULT 'disabled',
    wildcard            boolean NOT NULL DEFAULT false,
    web_prefix          text NOT NULL DEFAULT 'email',
    web_scheme          text NOT NULL DEFAULT 'http',
    require_tls         boolean NOT NULL DEFAULT false,
    skip_verification   boolean NOT NULL DEFAULT false,
    message_ttl         interval,                -- per-domain give-up lifetime override
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX domains_account ON domains (account_id);

-- account_id NULL + role 'operator' = an operator (admin API) key, never usable by a customer.
CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    account_id   bigint REFERENCES accounts ON DELETE CASCADE,
    domain_id    bigint REFERENCES domains ON DELETE CASCADE,
    role         text NOT NULL CHECK (role IN ('admin', 'sending', 'operator')),
    secret_hash  bytea NOT NULL UNIQUE,
    hint         text NOT NULL,
    description  text NOT NULL DEFAULT '',
    is_disabled  boolean NOT NULL DEFAULT false,
    expires_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE smtp_credentials (
    id             bigserial PRIMARY KEY,
    domain_id      bigint NOT NULL REFERENCES domains ON DELETE CASCADE,
    login          text NOT NULL UNIQUE,
    password_hash  text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE messages (
    id               bigserial PRIMARY KEY,
    account_id       bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    domain_id        bigint NOT NULL REFERENCES domains ON DELETE CASCADE,
    message_id       text NOT NULL,              -- Message-ID without brackets
    storage_key      text NOT NULL UNIQUE,
    mail_from        text NOT NULL,              -- envelope sender
    headers          jsonb NOT NULL,             -- from, to, subject, message-id for events
    tags             text[] NOT NULL DEFAULT '{}',
    user_variables   jsonb NOT NULL DEFAULT '{}',
    options          jsonb NOT NULL DEFAULT '{}', -- o:* options that act at delivery time
    attachments      jsonb NOT NULL DEFAULT '[]',
    method           text NOT NULL,
    size             int NOT NULL,
    body             bytea,                      -- sealed MIME; NULL once retention expires
    dkim_signature   text,                       -- DKIM-Signature header, computed once
    created_at       timestamptz NOT NULL DEFAULT now(),
    body_expires_at  timestamptz NOT NULL
);
CREATE INDEX messages_message_id ON messages (domain_id, message_id);
CREATE INDEX messages_body_expiry ON messages (body_expires_at) WHERE body IS NOT NULL;

-- The schedule: one row per (message, recipient). Postgres is the source of truth for what is
-- due; Redis only wakes the relay up.
CREATE TABLE recipients (
    id               bigserial PRIMARY KEY,
    message_pk       bigint NOT NULL REFERENCES messages ON DELETE CASCADE,
    account_id       bigint NOT NULL,
    domain_id        bigint NOT NULL,
    address          text NOT NULL,
    rcpt_domain      text NOT NULL,
    status           text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'delivered', 'failed')),
    attempts         int NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    leased_until     timestamptz,
    last_code        int,
    last_message     text,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recipients_due ON recipients (next_attempt_at) WHERE status = 'queued';
CREATE INDEX recipients_message ON recipients (message_pk);

CREATE TABLE events (
    id           bigserial PRIMARY KEY,
    event_id     text NOT NULL,
    account_id   bigint NOT NULL,
    domain_id    bigint NOT NULL,
    message_pk   bigint,
    event        text NOT NULL,
    severity     text,
    recipient    text,
    message_id   text,
    ts           timestamptz NOT NULL,
    data         jsonb NOT NULL
);
CREATE INDEX events_domain_ts ON events (domain_id, ts, id);
CREATE INDEX events_domain_message ON events (domain_id, message_id);
CREATE INDEX events_domain_recipient ON events (domain_id, recipient, ts);
