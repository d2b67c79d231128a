-- The indexer's dead-letter table (docs/api.md §1 decisions; not part of the contract):
-- source rows that could not become a document, recorded by the capture loop and the
-- initial load, listed and retried with `indexer quarantine`. It lives in the indexer's own
-- schema, outside `public` and outside the publication, and everything it needs (its
-- identity sequence, its indexes) lives there too.

CREATE SCHEMA IF NOT EXISTS loyalty_indexer;

CREATE TABLE loyalty_indexer.quarantine (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name    text        NOT NULL,
    row_id        text        NOT NULL,
    project_id    text        NULL,
    lsn           pg_lsn      NOT NULL,
    reason        text        NOT NULL,
    attempts      integer     NOT NULL DEFAULT 1,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT quarantine_row_unique UNIQUE (table_name, row_id)
);
