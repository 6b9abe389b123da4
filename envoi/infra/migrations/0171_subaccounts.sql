-- Subaccounts (Mailgun's /v5/accounts/subaccounts): an account of its own, linked to its parent, which
-- may act for it (X-Mailgun-On-Behalf-Of), disable it (it cannot send then) and cap its monthly volume.
-- A parent's purge leaves its subaccounts standing alone (SET NULL), never half-deleted.
ALTER TABLE accounts
    ADD COLUMN parent_id bigint REFERENCES accounts ON DELETE SET NULL,
    ADD COLUMN disabled_at timestamptz,
    -- Mailgun's custom monthly sending limit (recipients a calendar month, UTC), the account's own or
    -- set by its parent; NULL: none.
    ADD COLUMN monthly_limit int CHECK (monthly_limit > 0),
    ADD CONSTRAINT accounts_not_own_parent CHECK (parent_id <> id);
CREATE INDEX accounts_parent ON accounts (parent_id, id) WHERE parent_id IS NOT NULL;
