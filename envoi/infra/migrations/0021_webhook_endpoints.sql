-- Fairness by endpoint host (scheme://host:port), not by full URL: one slow host cannot take more
-- worker slots by being listed under many paths or domains.
ALTER TABLE webhook_deliveries ADD COLUMN endpoint text NOT NULL DEFAULT '';
UPDATE webhook_deliveries SET endpoint = substring(url from '^[a-z]+://[^/?#]+') WHERE endpoint = '';
CREATE INDEX webhook_deliveries_inflight ON webhook_deliveries (endpoint)
    WHERE status = 'pending' AND leased_until IS NOT NULL;
