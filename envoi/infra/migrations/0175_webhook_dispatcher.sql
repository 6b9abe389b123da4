-- The asyncio webhook dispatcher (envoi webhooks dispatch). Each endpoint host of an account that is
-- failing: since when, how often in a row, the last error (written with each batch of results; a
-- success clears failing_since). It feeds the dashboard and the metrics; the backlog itself stays in
-- webhook_deliveries. Goes with its account (cascade).
CREATE TABLE webhook_endpoint_health (
    account_id      bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    endpoint        text NOT NULL,                 -- scheme://host:port, as webhook_deliveries.endpoint
    failing_since   timestamptz,                   -- first failure after the last success; NULL: healthy
    failures        bigint NOT NULL DEFAULT 0,     -- failed attempts since the last success
    last_error      text,
    last_failure_at timestamptz,
    last_success_at timestamptz,
    PRIMARY KEY (account_id, endpoint)
);
CREATE INDEX webhook_endpoint_health_failing ON webhook_endpoint_health (failing_since)
    WHERE failing_since IS NOT NULL;

-- An endpoint's pending backlog, for the page that shows a failing endpoint.
CREATE INDEX webhook_deliveries_pending_endpoint ON webhook_deliveries (account_id, endpoint)
    WHERE status = 'pending';
