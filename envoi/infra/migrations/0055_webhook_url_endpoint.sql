-- Each webhook URL carries its endpoint (scheme://host:port, as webhooks.store.endpoint_of computes it
-- when the URL is set), so the outbox rows of an event batch are made by one INSERT ... SELECT in the
-- database: the writing transaction never waits to read the subscriptions first.
ALTER TABLE webhooks ADD COLUMN endpoint text NOT NULL DEFAULT '';
UPDATE webhooks SET endpoint = lower(substring(url from '^([A-Za-z][A-Za-z0-9+.-]*)://'))
    || '://' || lower(regexp_replace(substring(url from '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)'), '^.*@', ''));
ALTER TABLE webhooks ALTER COLUMN endpoint DROP DEFAULT;
