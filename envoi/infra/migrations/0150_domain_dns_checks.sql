-- What the last DNS check of each domain found (PUT /v4/domains/{d}/verify, and `envoi scheduler`'s
-- periodic re-check): per record, keyed "TYPE name value", its Mailgun `valid` and the values seen
-- (`cached`). A record found valid once and missing later is a broken record: the re-check records it
-- in the audit log, and a broken SPF or DKIM record makes the domain unverified again.
ALTER TABLE domains ADD COLUMN dns_checks jsonb NOT NULL DEFAULT '{}';
ALTER TABLE domains ADD COLUMN dns_checked_at timestamptz;
-- The re-check takes the domains checked longest ago first (never checked: since their creation).
CREATE INDEX domains_dns_due ON domains ((coalesce(dns_checked_at, created_at))) WHERE state <> 'disabled';
