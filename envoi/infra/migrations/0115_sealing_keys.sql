-- Encryption at rest with key ids (envoi.infra.crypto): the key ids that may still seal data in this
-- region. Each long-running process records its current key id at start and refuses to start if a
-- key id not retired here is one it was not given (data it could not open). `envoi encryption rotate`
-- retires every other id once no value is sealed under it any more.
CREATE TABLE IF NOT EXISTS sealing_keys (
    key_id         text PRIMARY KEY,
    first_used_at  timestamptz NOT NULL DEFAULT now(),
    retired_at     timestamptz
);
