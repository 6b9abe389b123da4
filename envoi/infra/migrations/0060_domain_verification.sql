-- Sending needs proof of control of the domain (PUT /v4/domains/{d}/verify finds its DKIM and SPF
-- records in DNS). Until then a domain is 'unverified' and sends only to its account's authorised
-- recipients. Domains that exist now were created before that rule: they stay able to send.
UPDATE domains SET state = 'active' WHERE state = 'unverified';

-- A name is no longer first come, first served: several accounts may hold it unverified (so nobody
-- can squat a name before its owner arrives), one account at most holds it active, and verifying it
-- releases the others' unverified rows.
ALTER TABLE domains DROP CONSTRAINT IF EXISTS domains_name_key;
CREATE UNIQUE INDEX domains_account_name ON domains (account_id, name);
CREATE UNIQUE INDEX domains_active_name ON domains (name) WHERE state = 'active';
CREATE INDEX domains_name ON domains (name);

-- Mailgun's authorised recipients (/v5/sandbox/auth_recipients): the only addresses an account's
-- unverified domains may send to (at most 5).
CREATE TABLE authorized_recipients (
    account_id  bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    address     text NOT NULL,           -- lower case
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, address)
);
