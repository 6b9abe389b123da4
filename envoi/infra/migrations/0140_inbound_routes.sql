-- Inbound routes (Mailgun's /v3/routes): per account, evaluated by priority (lower first).
-- `actions` keeps each action as the caller wrote it; the parsed form is rebuilt on read.
CREATE TABLE routes (
    id           text PRIMARY KEY,                 -- 24 hex characters, as Mailgun's
    account_id   bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    priority     integer NOT NULL DEFAULT 0,
    description  text NOT NULL DEFAULT '',
    expression   text NOT NULL,
    actions      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX routes_account_priority ON routes (account_id, priority, created_at);

-- A message received by the inbound MX for one recipient at a receiving domain. The raw message is
-- sealed like outbound bodies (context: storage_key) and kept 3 days (Mailgun's store()); `raw` is
-- NULL once expired. Stored messages are read back by storage key.
CREATE TABLE inbound_messages (
    id           bigserial PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    domain_id    bigint NOT NULL REFERENCES domains ON DELETE CASCADE,
    storage_key  text NOT NULL UNIQUE,
    recipient    text NOT NULL,
    sender       text NOT NULL,
    stored       boolean NOT NULL DEFAULT false,   -- a store() action kept it (retrievable by the API)
    raw          bytea,
    received_at  timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX inbound_messages_expiry ON inbound_messages (expires_at) WHERE raw IS NOT NULL;
CREATE INDEX inbound_messages_domain ON inbound_messages (domain_id, storage_key);

-- What a message's routes asked for, done after commit: 'forward' and 'notify' POST to the URL in
-- `target` (forward(url), store(notify=url)); 'mail' sends the message to the addresses in `target`
-- (forward(address), comma-separated) as the account's mail. The outbox of the inbound MX: written with
-- the message, done after commit, retried (Mailgun's schedule) until done or 8 hours old.
CREATE TABLE inbound_posts (
    id               bigserial PRIMARY KEY,
    account_id       bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    message_id       bigint NOT NULL REFERENCES inbound_messages ON DELETE CASCADE,
    kind             text NOT NULL CHECK (kind IN ('forward', 'notify', 'mail')),
    target           text NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'rejected', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    last_status      integer,
    last_error       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbound_posts_due ON inbound_posts (next_attempt_at) WHERE status = 'pending';
