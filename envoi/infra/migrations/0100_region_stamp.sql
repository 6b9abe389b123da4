-- The region this database belongs to, written by the first process that uses it (envoi/infra/region_stamp.py);
-- every process refuses to start against a database stamped with another region. One row at most.
CREATE TABLE region_stamp (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    region      text NOT NULL,
    stamped_at  timestamptz NOT NULL DEFAULT now()
);
