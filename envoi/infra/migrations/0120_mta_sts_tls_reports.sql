-- MTA-STS (RFC 8461) policy cache and TLS-RPT (RFC 8460) result counts, both per region (this database).
-- Neither holds account data: they describe recipient domains and their MX hosts.

-- The last valid policy fetched per recipient domain: used until expires_at (fetched_at + max_age),
-- re-fetched when the domain's _mta-sts TXT id changes; a failed fetch keeps using it (RFC 8461 5.1).
CREATE TABLE IF NOT EXISTS mta_sts_policies (
    domain      text PRIMARY KEY,
    policy_id   text NOT NULL,
    mode        text NOT NULL,
    mx          text[] NOT NULL,
    max_age     integer NOT NULL,
    policy_text text NOT NULL,
    fetched_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

-- Outbound TLS results per UTC day and recipient (policy) domain, summed by the relay and flushed every
-- few seconds. result_type is 'success' or an RFC 8460 result type (sts-policy-fetch-error,
-- certificate-host-mismatch, starttls-not-supported, validation-failure, ...).
CREATE TABLE IF NOT EXISTS tls_report_results (
    day           date NOT NULL,
    policy_domain text NOT NULL,
    policy_type   text NOT NULL,             -- sts | no-policy-found
    policy_id     text NOT NULL DEFAULT '',
    result_type   text NOT NULL,
    receiving_mx  text NOT NULL DEFAULT '',
    receiving_ip  text NOT NULL DEFAULT '',
    sending_ip    text NOT NULL DEFAULT '',
    detail        text NOT NULL DEFAULT '',  -- the last failure's additional-information
    sessions      bigint NOT NULL,
    PRIMARY KEY (policy_domain, day, policy_type, policy_id, result_type, receiving_mx, receiving_ip, sending_ip)
);
