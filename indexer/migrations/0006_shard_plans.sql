-- The indexer's shard plans (docs/scaling.md, "Sharded indexers"): how many indexer shards
-- own the projects from which WAL position on. The newest row is the plan in force; the one
-- before it is handing off until its shards' slots are gone. Written by `indexer reshard`,
-- read by every shard about once a second. Not part of the contract.

CREATE SCHEMA IF NOT EXISTS loyalty_indexer;

CREATE TABLE loyalty_indexer.shard_plans (
    generation  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    shards      integer     NOT NULL CONSTRAINT shard_plans_shards_check CHECK (shards >= 1),
    -- The plan's shards apply the transactions that commit at or after this position; the
    -- previous plan's shards, those that commit before it.
    handoff_lsn pg_lsn      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
