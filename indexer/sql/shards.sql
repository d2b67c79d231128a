-- Shard plans (indexer/shards.py, migration 0006). Publication names and row filters are
-- composed by psycopg.sql in indexer/reshard.py.

-- name: latest_shard_plans
-- The plan in force first, then the one it took over from.
SELECT generation, shards, handoff_lsn::text
FROM loyalty_indexer.shard_plans
ORDER BY generation DESC
LIMIT 2

-- name: insert_shard_plan
INSERT INTO loyalty_indexer.shard_plans (shards, handoff_lsn)
VALUES (%(shards)s, %(handoff)s::pg_lsn)
RETURNING generation

-- name: create_logical_slot
-- Waits for the transactions running now to end; returns the slot's consistent point.
SELECT lsn::text FROM pg_create_logical_replication_slot(%(slot)s::name, 'pgoutput')

-- name: existing_slots
SELECT slot_name::text FROM pg_replication_slots WHERE slot_name = ANY(%(slots)s::name[])

-- name: create_filtered_publication
CREATE PUBLICATION {publication} FOR {tables}

-- name: shard_plans_lock_shared
-- Held by a shard while it reads the plans and then the WAL position it will peek up to;
-- taken exclusively by `indexer reshard` while it picks the handoff and records the plan.
-- So a shard either read its position before the handoff was picked (and stays below it) or
-- sees the new plan. Transaction-scoped: released at COMMIT.
SELECT pg_advisory_xact_lock_shared(hashtext(%(name)s))

-- name: shard_plans_lock
SELECT pg_advisory_xact_lock(hashtext(%(name)s))

-- name: delete_shard_plans
-- `indexer drop`: back to the implicit plan of one shard.
DELETE FROM loyalty_indexer.shard_plans
