-- Relay: leases name the relay host that holds them, so a relay restarted on the same host takes
-- its orphans back at once instead of waiting for the lease to run out.
ALTER TABLE recipients ADD COLUMN IF NOT EXISTS lease_owner text;

-- Optional second DKIM signature (ed25519-sha256, RFC 8463) per domain; key sealed like the RSA one.
ALTER TABLE domains ADD COLUMN IF NOT EXISTS dkim_ed25519_selector text;
ALTER TABLE domains ADD COLUMN IF NOT EXISTS dkim_ed25519_key bytea;
ALTER TABLE domains ADD COLUMN IF NOT EXISTS dkim_ed25519_public_key text;
