-- Account-level webhooks (Mailgun's /v1/webhooks): a webhook row with no domain fires for every domain
-- of its account. One account webhook (hook_id, as the API names it) is one URL for several event
-- types, kept as one row per type so the outbox fan-out matches both levels the same way.
ALTER TABLE webhooks ALTER COLUMN domain_id DROP NOT NULL;
ALTER TABLE webhooks ADD COLUMN hook_id text, ADD COLUMN description text;
ALTER TABLE webhooks ADD CONSTRAINT webhooks_level CHECK ((domain_id IS NULL) = (hook_id IS NOT NULL));
-- The fan-out's lookup of an event's account-level URLs, and "one URL once per event type".
CREATE UNIQUE INDEX webhooks_account_url ON webhooks (account_id, event_type, url) WHERE domain_id IS NULL;
CREATE INDEX webhooks_hook ON webhooks (hook_id) WHERE hook_id IS NOT NULL;
