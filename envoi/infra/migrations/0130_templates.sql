-- Stored templates (Mailgun's /v3/{domain}/templates and /v4/templates) and their versions. Region data:
-- this region's database only. A template belongs to one account; domain_id NULL makes it an account
-- template, reachable from every domain of that account (a domain template of the same name wins).
CREATE TABLE IF NOT EXISTS templates (
    id          bigserial PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    domain_id   bigint REFERENCES domains ON DELETE CASCADE,
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    created_by  text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS templates_domain_name ON templates (domain_id, name) WHERE domain_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS templates_account_name ON templates (account_id, name) WHERE domain_id IS NULL;

-- A template's versions; at most one is active (the one a send without t:version renders).
CREATE TABLE IF NOT EXISTS template_versions (
    id          bigserial PRIMARY KEY,
    template_id bigint NOT NULL REFERENCES templates ON DELETE CASCADE,
    account_id  bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    tag         text NOT NULL,
    engine      text NOT NULL DEFAULT 'handlebars',
    template    text NOT NULL,
    comment     text NOT NULL DEFAULT '',
    headers     jsonb,
    active      boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (template_id, tag)
);
CREATE UNIQUE INDEX IF NOT EXISTS template_versions_active ON template_versions (template_id) WHERE active;
CREATE INDEX IF NOT EXISTS template_versions_account ON template_versions (account_id);
