-- Account lifecycle (issue 15): restriction of processing, last activity for inactive-account purges.
-- 'restricted': processing frozen on the customer's request (GDPR Art. 18): nothing sent, accepted or
-- tracked, data kept and exportable; lifted only by an operator.
ALTER TABLE accounts DROP CONSTRAINT accounts_state_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_state_check
    CHECK (state IN ('active', 'suspended', 'restricted', 'closed'));

-- Day-granular last activity (a sign-in or a send): written at most once a day per account and process.
-- inactivity_warned_at: when the "inactive account" warning mail was sent; cleared by new activity.
ALTER TABLE accounts
    ADD COLUMN last_active_on        date NOT NULL DEFAULT current_date,
    ADD COLUMN inactivity_warned_at  timestamptz;
CREATE INDEX accounts_last_active ON accounts (last_active_on) WHERE state <> 'closed';
CREATE INDEX accounts_closed_at ON accounts (closed_at) WHERE closed_at IS NOT NULL;
