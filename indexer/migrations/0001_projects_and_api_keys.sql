-- Tenants and their API keys (docs/api.md §1).
-- Every contract table has REPLICA IDENTITY FULL: the indexer needs the old row of an update
-- or a delete (which customer a deleted redemption belonged to, a voucher's previous code).

CREATE TABLE projects (
    id         text        PRIMARY KEY,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE projects REPLICA IDENTITY FULL;

CREATE TABLE api_keys (
    id                    text        PRIMARY KEY,
    project_id            text        NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    token_sha256          text        NOT NULL,
    rate_limit_per_minute integer     NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    revoked_at            timestamptz NULL
);
ALTER TABLE api_keys REPLICA IDENTITY FULL;
CREATE INDEX api_keys_project_id_idx ON api_keys (project_id);
