-- Mailing lists (Mailgun's /v3/lists): a list belongs to an account and its address is on one of the
-- account's domains; a message to that address goes to the list's subscribed members.

CREATE TABLE mailing_lists (
    id                bigserial PRIMARY KEY,
    account_id        bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    domain_id         bigint NOT NULL REFERENCES domains ON DELETE CASCADE,
    address           text NOT NULL UNIQUE,             -- lower case; the list's id in the API
    name              text NOT NULL DEFAULT '',
    description       text NOT NULL DEFAULT '',
    access_level      text NOT NULL DEFAULT 'readonly' CHECK (access_level IN ('readonly', 'members', 'everyone')),
    reply_preference  text NOT NULL DEFAULT 'list' CHECK (reply_preference IN ('list', 'sender')),
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mailing_lists_account ON mailing_lists (account_id, address);
CREATE INDEX mailing_lists_domain ON mailing_lists (domain_id);

-- account_id repeats the list's: every query is scoped by it, and the account's archive and purge read it.
CREATE TABLE mailing_list_members (
    list_id     bigint NOT NULL REFERENCES mailing_lists ON DELETE CASCADE,
    account_id  bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    address     text NOT NULL,                         -- lower case
    name        text NOT NULL DEFAULT '',
    vars        jsonb NOT NULL DEFAULT '{}',
    subscribed  boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (list_id, address)
);
CREATE INDEX mailing_list_members_account ON mailing_list_members (account_id);
