-- People who sign in to the dashboard (issue 13): users of an account with one of Mailgun's roles,
-- and operators (account_id NULL, role 'operator') who run the platform and never act for a customer.
CREATE TABLE users (
    id             bigserial PRIMARY KEY,
    account_id     bigint REFERENCES accounts ON DELETE CASCADE,
    email          text NOT NULL,                 -- as given; unique per account case-insensitively
    password_hash  text NOT NULL,                 -- argon2
    role           text NOT NULL CHECK (role IN ('admin', 'developer', 'support', 'analyst', 'billing', 'operator')),
    totp_secret    bytea,                         -- sealed with the region key; NULL = no second factor
    totp_last_step bigint,                        -- the last code's time step: a code signs in once
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((account_id IS NULL) = (role = 'operator'))
);
CREATE UNIQUE INDEX users_account_email ON users (coalesce(account_id, 0), lower(email));
CREATE INDEX users_email ON users (lower(email));

-- Single-use recovery codes of a user's TOTP, stored as SHA-256 (they are random, not chosen).
CREATE TABLE user_recovery_codes (
    user_id    bigint NOT NULL REFERENCES users ON DELETE CASCADE,
    code_hash  bytea NOT NULL,
    used_at    timestamptz,
    PRIMARY KEY (user_id, code_hash)
);

-- An admin's invitation: the token is shown once and stored as SHA-256; accepting it creates the user.
CREATE TABLE user_invitations (
    id           bigserial PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    email        text NOT NULL,
    role         text NOT NULL CHECK (role IN ('admin', 'developer', 'support', 'analyst', 'billing')),
    token_hash   bytea NOT NULL UNIQUE,
    invited_by   text NOT NULL,                   -- the audit actor who invited
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    accepted_at  timestamptz
);
CREATE INDEX user_invitations_account ON user_invitations (account_id);

-- Server-side sessions: the cookie carries a random token, the row its SHA-256.
CREATE TABLE user_sessions (
    token_hash    bytea PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,           -- absolute limit; idle expiry is from last_seen_at
    ip            text,
    user_agent    text NOT NULL DEFAULT ''
);
CREATE INDEX user_sessions_user ON user_sessions (user_id);

-- What was done to an account, by whom, when, from where. account_id NULL = platform-wide.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    account_id  bigint REFERENCES accounts ON DELETE CASCADE,
    actor       text NOT NULL,                    -- user:<id>, key:<id>, operator:<id>, cli
    action      text NOT NULL,                    -- e.g. user.invited, session.created
    target      text NOT NULL DEFAULT '',
    ip          text,
    at          timestamptz NOT NULL DEFAULT now(),
    details     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_account ON audit_log (account_id, id DESC);
