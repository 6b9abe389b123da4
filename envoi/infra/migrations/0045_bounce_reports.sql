-- Asynchronous bounces (DSN) and complaints (ARF) already recorded, one row per recipient and kind:
-- a report retransmitted by its sender, or a second report about the same recipient, records no
-- second event. Rows go with their recipient (and so with the message's retention purge).
CREATE TABLE bounce_reports (
    recipient_id  bigint NOT NULL REFERENCES recipients ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('bounce', 'complaint')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (recipient_id, kind)
);
