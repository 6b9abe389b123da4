-- Billing with Stripe (issue 14): only Stripe's ids are stored, never card data.
-- billing_status follows the subscription: 'none' (no subscription: the free plan), 'active',
-- 'past_due' (a payment failed; grace_until is when the scheduler suspends), 'canceled'.
-- pending_plan is a downgrade waiting for the period's end (billing_period_end).
-- billing_synced_at is the Stripe `created` time of the newest event applied, so an older event that
-- arrives late does not undo a newer one.
ALTER TABLE accounts
    ADD COLUMN stripe_customer_id      text UNIQUE,
    ADD COLUMN stripe_subscription_id  text UNIQUE,
    ADD COLUMN billing_status          text NOT NULL DEFAULT 'none'
        CHECK (billing_status IN ('none', 'active', 'past_due', 'canceled')),
    ADD COLUMN grace_until             timestamptz,
    ADD COLUMN pending_plan            text,
    ADD COLUMN billing_period_start    timestamptz,
    ADD COLUMN billing_period_end      timestamptz,
    ADD COLUMN billing_synced_at       bigint NOT NULL DEFAULT 0;

CREATE INDEX accounts_grace_until ON accounts (grace_until) WHERE grace_until IS NOT NULL;

-- Stripe webhook events processed, by event id: a redelivered event is acknowledged and skipped.
CREATE TABLE stripe_events (
    id            text PRIMARY KEY,
    type          text NOT NULL,
    created       bigint NOT NULL,
    account_id    bigint REFERENCES accounts ON DELETE SET NULL,
    processed_at  timestamptz NOT NULL DEFAULT now()
);

-- Overage pushed to Stripe as invoice items. A row is written (pushed_item_id NULL) before the Stripe
-- call, under the deterministic key (account, period, cumulative units); the item carries the key in
-- its metadata. A retry after a crash finds the row and looks for the item by that key before
-- creating one, so a period's usage is never billed twice.
CREATE TABLE billing_overage_pushes (
    idempotency_key  text PRIMARY KEY,
    account_id       bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    period_start     timestamptz NOT NULL,
    cumulative_units bigint NOT NULL,    -- messages beyond the included volume billed so far this period
    units            bigint NOT NULL,    -- what this push adds
    amount           bigint NOT NULL,    -- cents
    stripe_item_id   text,               -- NULL: intent recorded, Stripe not (yet) confirmed
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, period_start, cumulative_units)
);
