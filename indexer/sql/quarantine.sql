-- The quarantine (indexer/quarantine.py): rows that could not become a document. Every
-- statement names the table in its own schema, loyalty_indexer. LSNs travel as text.

-- name: quarantine_exists
SELECT to_regclass('loyalty_indexer.quarantine') IS NOT NULL

-- name: quarantine_record
-- One row per source row. Recording it again at the same LSN with the same reason (a batch
-- applied again after an outage) changes nothing and returns nothing: only a new fact (a
-- newer change that fails too, another reason) counts as a new quarantine.
INSERT INTO loyalty_indexer.quarantine AS q (table_name, row_id, project_id, lsn, reason)
SELECT u.table_name, u.row_id, u.project_id, u.lsn::pg_lsn, u.reason
FROM unnest(%(tables)s::text[], %(ids)s::text[], %(projects)s::text[], %(lsns)s::text[],
            %(reasons)s::text[]) AS u(table_name, row_id, project_id, lsn, reason)
ON CONFLICT (table_name, row_id) DO UPDATE
SET project_id = EXCLUDED.project_id, lsn = EXCLUDED.lsn, reason = EXCLUDED.reason,
    attempts = q.attempts + 1, last_seen_at = now()
WHERE EXCLUDED.lsn > q.lsn OR (EXCLUDED.lsn = q.lsn AND EXCLUDED.reason <> q.reason)
RETURNING q.table_name, q.row_id

-- name: quarantine_resolve
-- Rows written at a version: their entry goes, unless a newer change was quarantined since.
DELETE FROM loyalty_indexer.quarantine AS q
USING unnest(%(tables)s::text[], %(ids)s::text[], %(lsns)s::text[]) AS u(table_name, row_id, lsn)
WHERE q.table_name = u.table_name AND q.row_id = u.row_id AND q.lsn <= u.lsn::pg_lsn
RETURNING q.table_name, q.row_id

-- name: quarantine_failed_again
UPDATE loyalty_indexer.quarantine
SET reason = %(reason)s, attempts = attempts + 1, last_seen_at = now()
WHERE table_name = %(table)s AND row_id = %(row_id)s

-- name: quarantine_keys
SELECT table_name, row_id FROM loyalty_indexer.quarantine

-- name: quarantine_count
SELECT count(*) FROM loyalty_indexer.quarantine

-- name: quarantine_entries
SELECT id, table_name, row_id, project_id, lsn::text, reason, attempts, first_seen_at,
       last_seen_at
FROM loyalty_indexer.quarantine
ORDER BY id

-- name: quarantine_entries_by_ids
SELECT id, table_name, row_id, project_id, lsn::text, reason, attempts, first_seen_at,
       last_seen_at
FROM loyalty_indexer.quarantine
WHERE id = ANY(%(ids)s::bigint[])
ORDER BY id
