-- DKIM keys beside each domain's signing keys (the /v1/dkim/keys API, envoi.accounts.dkim).
-- A domain signs with the keys in its own row (dkim_private_key, dkim_ed25519_key); this table holds
-- the others: keys made or imported and not signing yet ('inactive': activating one checks its record
-- in DNS first), and keys an activation or a rotation replaced ('retiring': their record is still asked
-- for until no queued mail signed with them is left, then the row goes). A retiring key needs no
-- private key (what it signed is signed); an inactive one is sealed like the domain's own keys
-- ('dkim:' or 'dkim-ed25519:' || signing_domain, envoi.infra.dkim_keys).
CREATE TABLE IF NOT EXISTS dkim_keys (
    id              bigserial PRIMARY KEY,
    domain_id       bigint NOT NULL REFERENCES domains ON DELETE CASCADE,  -- the signing domain (d=)
    signing_domain  text NOT NULL,                                         -- its name: the sealing context
    selector        text NOT NULL,
    algorithm       text NOT NULL CHECK (algorithm IN ('rsa', 'ed25519')),
    bits            int,                                                   -- RSA only
    private_key     bytea,                                                 -- sealed; NULL once retiring
    public_key      text NOT NULL,                                         -- the record's p=
    state           text NOT NULL CHECK (state IN ('inactive', 'retiring')),
    retiring_since  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (domain_id, selector)
);

-- Automatic rotation (/v1/dkim_management): a new RSA key under a new selector every interval; it
-- signs once its record is found in DNS (envoi.mta.dkim_rotation).
ALTER TABLE domains ADD COLUMN IF NOT EXISTS dkim_rotation_enabled boolean NOT NULL DEFAULT false;
ALTER TABLE domains ADD COLUMN IF NOT EXISTS dkim_rotation_interval interval;
-- DKIM authority (PUT /v3/domains/{d}/dkim_authority self=false): a subdomain signs as this parent
-- domain of the same account, with the parent's keys (d= the parent). NULL: the domain itself.
ALTER TABLE domains ADD COLUMN IF NOT EXISTS dkim_authority_id bigint REFERENCES domains ON DELETE SET NULL;
