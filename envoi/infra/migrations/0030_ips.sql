-- IP inventory, pools, dedicated assignment, warm-up quota and the assignment audit log.

-- One row per egress address of this region. A relay only binds the addresses of its own host.
-- dedicated + account_id = the address belongs to that customer (assigned_at: since when).
CREATE TABLE ips (
    address      text PRIMARY KEY,
    host         text NOT NULL,                 -- relay host the address lives on (ENVOI_RELAY_HOST)
    helo         text NOT NULL,                 -- EHLO name; its A record and the PTR should match
    ptr          text NOT NULL DEFAULT '',      -- the reverse DNS name the address should have
    enabled      boolean NOT NULL DEFAULT true,
    dedicated    boolean NOT NULL DEFAULT false,
    account_id   bigint REFERENCES accounts ON DELETE SET NULL,
    assigned_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (account_id IS NULL OR dedicated)
);
CREATE INDEX ips_account ON ips (account_id) WHERE account_id IS NOT NULL;

CREATE TABLE ip_pools (
    id           text PRIMARY KEY,              -- pool_id
    name         text NOT NULL,
    description  text NOT NULL DEFAULT '',
    account_id   bigint REFERENCES accounts ON DELETE CASCADE,  -- NULL until linked or given an owner
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ip_pool_members (
    pool_id  text NOT NULL REFERENCES ip_pools ON DELETE CASCADE,
    address  text NOT NULL REFERENCES ips ON DELETE CASCADE,
    PRIMARY KEY (pool_id, address)
);

-- A domain sends over its dedicated IPs, or over one linked pool (not both: linking replaces).
CREATE TABLE domain_ips (
    domain_id  bigint NOT NULL REFERENCES domains ON DELETE CASCADE,
    address    text NOT NULL REFERENCES ips ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain_id, address)
);

CREATE TABLE domain_ip_pools (
    domain_id  bigint PRIMARY KEY REFERENCES domains ON DELETE CASCADE,
    pool_id    text NOT NULL REFERENCES ip_pools ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Warm-up: a stage plan [[days, daily cap], ...] started at started_at.
CREATE TABLE ip_warmups (
    address     text PRIMARY KEY REFERENCES ips ON DELETE CASCADE,
    plan        jsonb NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Daily quota per warming address. A relay reserves quota here in blocks (reserved never exceeds
-- the day's cap, enforced by the UPDATE) and spends it in memory; used = what it actually spent.
CREATE TABLE ip_warmup_usage (
    address   text NOT NULL REFERENCES ips ON DELETE CASCADE,
    day_no    int NOT NULL,                    -- whole days since the warm-up started
    day_cap   int NOT NULL,
    reserved  int NOT NULL DEFAULT 0 CHECK (reserved <= day_cap),
    used      int NOT NULL DEFAULT 0,
    PRIMARY KEY (address, day_no)
);

-- Every assignment change: who, when, what.
CREATE TABLE ip_audit (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,                 -- "key:<id>" or "cli:<user>"
    action      text NOT NULL,
    address     text,
    account_id  bigint,
    domain      text,
    pool_id     text,
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX ip_audit_address ON ip_audit (address, at);
