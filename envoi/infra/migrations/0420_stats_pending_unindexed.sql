-- Postgres's share of each message on the send path, second pass (issue 20; figures in docs/benchmarks.md,
-- branch pgcut3).
--
-- event_stats_pending holds only the counts appended since the last fold (every 2 s after a commit, and
-- every minute by the scheduler): a few rows per group commit, deleted whole by each fold. Its index was
-- written for every row appended (~0.3 per message accepted) and cleaned by every vacuum of a table that
-- churns completely, while each query of it (the stats and usage readers add the pending counts to the
-- rollup's; a tag's removal) reads a table of a few hundred rows, which a sequential scan does as fast.
DROP INDEX IF EXISTS event_stats_pending_domain;
