-- Delivery logs: events partitioned by UTC day, stats and tag rollups.
--
-- Partitions are named events_pYYYYMMDD and cover [day, day + 1). events_default catches any row
-- whose day has no partition yet (an insert is never lost); the maintenance job
-- (envoi.events.service.Events.maintain) creates upcoming partitions, moves rows out of the default
-- partition and drops partitions older than the longest retention in use.

ALTER TABLE events RENAME TO events_unpartitioned;
ALTER INDEX events_domain_ts RENAME TO events_unpartitioned_domain_ts;
ALTER INDEX events_domain_message RENAME TO events_unpartitioned_domain_message;
ALTER INDEX events_domain_recipient RENAME TO events_unpartitioned_domain_recipient;
ALTER TABLE events_unpartitioned ALTER COLUMN id DROP DEFAULT;
ALTER SEQUENCE events_id_seq OWNED BY NONE;

CREATE TABLE events (
    id           bigint NOT NULL DEFAULT nextval('events_id_seq'),
    event_id     text NOT NULL,
    account_id   bigint NOT NULL,
    domain_id    bigint NOT NULL,
    message_pk   bigint,
    event        text NOT NULL,
    severity     text,
    recipient    text,
    message_id   text,
    ts           timestamptz NOT NULL,
    data         jsonb NOT NULL,
    sender       text,                      -- the From header, for `from` filters
    subject      text,
    tags         text[] NOT NULL DEFAULT '{}'
) PARTITION BY RANGE (ts);
ALTER SEQUENCE events_id_seq OWNED BY events.id;

CREATE INDEX events_domain_ts ON events (domain_id, ts, id);
CREATE INDEX events_domain_recipient ON events (domain_id, recipient, ts, id);
CREATE INDEX events_domain_event ON events (domain_id, event, ts, id);
CREATE INDEX events_domain_message ON events (domain_id, message_id);

CREATE TABLE events_default PARTITION OF events DEFAULT;

DO $$
DECLARE
    day date;
BEGIN
    FOR day IN SELECT generate_series((now() AT TIME ZONE 'UTC')::date - 1,
                                      (now() AT TIME ZONE 'UTC')::date + 3, interval '1 day')::date LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                       'events_p' || to_char(day, 'YYYYMMDD'),
                       day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
    END LOOP;
END $$;

INSERT INTO events (id, event_id, account_id, domain_id, message_pk, event, severity, recipient, message_id,
                    ts, data, sender, subject, tags)
SELECT id, event_id, account_id, domain_id, message_pk, event, severity, recipient, message_id, ts, data,
       data #>> '{message,headers,from}', data #>> '{message,headers,subject}',
       COALESCE(ARRAY(SELECT jsonb_array_elements_text(data -> 'tags')), '{}')
FROM events_unpartitioned;
DROP TABLE events_unpartitioned;

-- Counters per (domain, tag, hour, event, severity, reason, method), kept in the same transaction as
-- the events. tag = '' is the domain total; a tagged event also counts under each of its tags.
CREATE TABLE event_stats_hourly (
    domain_id   bigint NOT NULL,
    account_id  bigint NOT NULL,
    tag         text NOT NULL DEFAULT '',
    hour        timestamptz NOT NULL,
    event       text NOT NULL,
    severity    text NOT NULL DEFAULT '',
    reason      text NOT NULL DEFAULT '',
    method      text NOT NULL DEFAULT '',
    count       bigint NOT NULL,
    PRIMARY KEY (domain_id, tag, hour, event, severity, reason, method)
);

CREATE TABLE event_tags (
    domain_id    bigint NOT NULL,
    account_id   bigint NOT NULL,
    tag          text NOT NULL,
    description  text NOT NULL DEFAULT '',
    first_seen   timestamptz NOT NULL,
    last_seen    timestamptz NOT NULL,
    PRIMARY KEY (domain_id, tag)
);
