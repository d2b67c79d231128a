-- Reads on the optional standby (``indexer.standby``).

-- name: standby_replay_position
-- Whether the server is still a standby, and the WAL it has replayed: a commit there is
-- visible to new snapshots once this position is past the commit record's end.
SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text
