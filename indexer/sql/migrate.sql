-- Bookkeeping of `indexer migrate`: which migration files have been applied.

-- name: migrate_lock
-- One runner at a time: a second `indexer migrate` waits here, then finds nothing pending.
SELECT pg_advisory_lock(hashtextextended('loyalty.schema_migrations', 0))

-- name: migrate_unlock
SELECT pg_advisory_unlock(hashtextextended('loyalty.schema_migrations', 0))

-- name: migrate_create_log
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text        PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: migrate_applied
SELECT name FROM schema_migrations

-- name: migrate_record
INSERT INTO schema_migrations (name, applied_at) VALUES (%(name)s, now())
