-- DKIM key rotation (Accounts.rotate_dkim_key): the next key waits here, under its own selector, until
-- a verification finds its record published; then it becomes the signing key in one update, so the
-- relay never signs with a key whose record receivers cannot find yet.
ALTER TABLE domains ADD COLUMN IF NOT EXISTS dkim_pending_selector text;
ALTER TABLE domains ADD COLUMN IF NOT EXISTS dkim_pending_private_key bytea;  -- sealed like dkim_private_key
ALTER TABLE domains ADD COLUMN IF NOT EXISTS dkim_pending_public_key text;
ALTER TABLE domains ADD COLUMN IF NOT EXISTS dkim_pending_key_size int;
ALTER TABLE domains ADD COLUMN IF NOT EXISTS dkim_rotated_at timestamptz;     -- when the last switch happened
