-- Bulk address validation (Mailgun's /v4/address/validate/bulk/{list_id}): one row per job, one per
-- uploaded address with its result once a worker validated it. Both are personal data: scoped by
-- account, deleted by the job's expires_at (ENVOI_VALIDATION_RESULTS_TTL), included in the address
-- export and erasure and in the account archive.
CREATE TABLE validation_jobs (
    id bigserial PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    list_id text NOT NULL,
    status text NOT NULL DEFAULT 'created',  -- created, processing, uploaded (done), failed
    quantity integer NOT NULL,
    records_processed integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    UNIQUE (account_id, list_id)
);
CREATE INDEX validation_jobs_expires ON validation_jobs (expires_at);
CREATE INDEX validation_jobs_running ON validation_jobs (updated_at) WHERE status IN ('created', 'processing');

CREATE TABLE validation_items (
    job_id bigint NOT NULL REFERENCES validation_jobs(id) ON DELETE CASCADE,
    position integer NOT NULL,
    account_id bigint NOT NULL,
    address text NOT NULL,
    result jsonb,  -- NULL until validated
    PRIMARY KEY (job_id, position)
);
CREATE INDEX validation_items_pending ON validation_items (job_id, position) WHERE result IS NULL;
CREATE INDEX validation_items_address ON validation_items (account_id, lower(address));
