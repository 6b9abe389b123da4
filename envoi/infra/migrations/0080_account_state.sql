-- Account state (issue 13): 'active'; 'suspended' by an operator (or, later, billing dunning), with the
-- reason shown to the account's users; 'closed' when the customer deleted the account. A closed
-- account's keys, SMTP logins and dashboard users stop working at once; its data stays until the purge
-- (within 90 days of closed_at), which is issue 15's and not done here.
ALTER TABLE accounts
    ADD COLUMN state            text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'suspended', 'closed')),
    ADD COLUMN state_reason     text NOT NULL DEFAULT '',
    ADD COLUMN state_changed_at timestamptz,
    ADD COLUMN closed_at        timestamptz,
    ADD CONSTRAINT accounts_closed_at CHECK ((state = 'closed') = (closed_at IS NOT NULL));
