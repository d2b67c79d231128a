-- Change capture: publication, logical replication slot, snapshot export and slot reads.
-- Queries with {placeholders} take identifiers composed by psycopg.sql in indexer/slot.py;
-- the others take bind parameters. LSNs travel as text ('X/Y') and are cast here.

-- name: publication_exists
SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = %(publication)s)

-- name: publication_tables
SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %(publication)s

-- name: create_publication
CREATE PUBLICATION {publication} FOR TABLE {tables}

-- name: publication_add_tables
ALTER PUBLICATION {publication} ADD TABLE {tables}

-- name: drop_publication
DROP PUBLICATION IF EXISTS {publication}

-- name: slot_exists
SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %(slot)s)

-- name: create_slot_exporting_snapshot
CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput (SNAPSHOT 'export')

-- name: create_temporary_slot_exporting_snapshot
CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')

-- name: snapshot_reader_begin
BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY

-- name: snapshot_reader_isolation
-- For a connection that is not in autocommit: the driver has just sent BEGIN.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY

-- name: snapshot_reader_import
SET TRANSACTION SNAPSHOT {snapshot}

-- name: peek_changes
-- upto_nchanges is checked only after each decoded commit: a batch always holds whole
-- transactions and may return more rows than asked for.
SELECT lsn::text, xid::text::bigint, data
FROM pg_logical_slot_peek_binary_changes(
    %(slot)s::name, %(upto_lsn)s::pg_lsn, %(upto_nchanges)s::int,
    'proto_version', '1', 'publication_names', %(publication)s::text)

-- name: advance_slot
-- Postgres refuses to move a slot backwards ("cannot advance replication slot to X,
-- minimum is Y"); GREATEST with the confirmed position makes an older target a no-op.
SELECT end_lsn::text
FROM pg_replication_slot_advance(
    %(slot)s::name,
    GREATEST(%(lsn)s::pg_lsn,
             (SELECT confirmed_flush_lsn FROM pg_replication_slots
              WHERE slot_name = %(slot)s::name)))

-- name: current_wal_lsn
-- The flush position, not pg_current_wal_lsn() (the write position): logical decoding
-- reads only flushed WAL, see current_wal_lsn() in indexer/slot.py.
SELECT pg_current_wal_flush_lsn()::text

-- name: slot_status
SELECT active, confirmed_flush_lsn::text, restart_lsn::text, pg_current_wal_lsn()::text,
       wal_status
FROM pg_replication_slots
WHERE slot_name = %(slot)s

-- name: drop_slot
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %(slot)s

-- name: transactions_still_invisible
-- A commit record reaches the flushed WAL, and so the decoder, a moment before the
-- transaction becomes visible to other sessions. Rebuilding a document in that window would
-- read the old row and store it at the new version (lost for good: the slot then moves past
-- the change). This says whether any of the batch's transactions is still in
-- progress for a fresh snapshot. In progress is either of two things: listed in the
-- snapshot's xip, or at or after its xmax. xip holds only the running xids below xmax, and
-- xmax is the newest completed xid + 1, so the newest transaction, still finishing while no
-- later one has completed, is in no list: the second test catches it. Decoded xids are
-- 32-bit; "at or after xmax" is taken modulo 2^32 over half the xid space, as Postgres
-- compares xids.
WITH snapshot AS (
    SELECT pg_current_snapshot() AS taken
)
SELECT EXISTS (
    SELECT 1 FROM snapshot, unnest(%(xids)s::bigint[]) AS decoded(xid)
    WHERE ((decoded.xid - pg_snapshot_xmax(snapshot.taken)::text::bigint) %% 4294967296
           + 4294967296) %% 4294967296 < 2147483648
       OR decoded.xid IN (
           SELECT running.xid::text::bigint %% 4294967296
           FROM pg_snapshot_xip(snapshot.taken) AS running(xid))
)
