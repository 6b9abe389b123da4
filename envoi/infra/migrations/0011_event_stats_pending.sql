-- Stats rollups without hot rows: the recording transaction only appends its counts here (no
-- conflicts, no row locks shared with other writers); a fold job moves them into
-- event_stats_hourly every few seconds. Stats queries read both, so they are always current.
CREATE TABLE event_stats_pending (
    domain_id   bigint NOT NULL,
    account_id  bigint NOT NULL,
    tag         text NOT NULL,
    hour        timestamptz NOT NULL,
    event       text NOT NULL,
    severity    text NOT NULL,
    reason      text NOT NULL,
    method      text NOT NULL,
    count       bigint NOT NULL,
    last_ts     timestamptz NOT NULL    -- latest event in this batch (for tags' last-seen)
);
CREATE INDEX event_stats_pending_domain ON event_stats_pending (domain_id, tag, hour);
