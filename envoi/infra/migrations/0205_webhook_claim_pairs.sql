-- The dispatcher's claim reads each (account, endpoint)'s due rows in order, at most its free room,
-- instead of ranking the whole due backlog: a dead endpoint's 100,000 rows then cost the claim one
-- index probe, not a scan and a sort (bench/webhook_dispatch.py: 38-84 ms per claim with 4,000 such
-- rows, which serialised both dispatchers behind the claim lock). It also serves the per-pair lookups
-- the old (account_id, endpoint) index did.
CREATE INDEX webhook_deliveries_pair_due ON webhook_deliveries (account_id, endpoint, next_attempt_at, id)
    WHERE status = 'pending';
DROP INDEX webhook_deliveries_pending_endpoint;
