"""The indexer's own exceptions, and the Postgres boundary that produces them.

The capture loop decides by class alone: every ``cache.errors.StoreUnavailable`` (Postgres,
Elasticsearch or Redis that cannot answer now) is waited out and retried; the others are
bugs or broken state that need a person.
"""

from __future__ import annotations

import psycopg

from cache.boundary import boundary
from cache.errors import StoreBug, StoreError, StoreUnavailable


class IndexerError(Exception):
    """Base of every error the indexer raises on purpose."""


class SourceUnavailable(IndexerError, StoreUnavailable):
    """Postgres cannot be reached or refused for a transient reason; retry later."""


class SourceBug(IndexerError, StoreBug):
    """Postgres refused a statement of ours (a query error, a value it cannot convert)."""


class SlotError(IndexerError, StoreBug):
    """A replication slot or publication operation failed for a non-transient reason."""


class SlotLost(IndexerError):
    """The slot was dropped from outside or invalidated (its WAL is gone): the changes since
    the last batch can no longer be read, so the indices are rebuilt from a new snapshot."""

    def __init__(self, slot_name: str, reason: str) -> None:
        super().__init__(f"replication slot {slot_name!r} {reason}")
        self.reason = reason


class PgOutputError(IndexerError):
    """A pgoutput message is malformed, or refers to a relation never described."""


def classify_postgres(error: BaseException) -> StoreError | None:
    """The Postgres boundary: connection losses, shutdowns, cancellations and timeouts are
    outages (``OperationalError``); any other driver error is a statement of ours gone wrong."""
    if isinstance(error, StoreError):
        return None
    if isinstance(error, psycopg.OperationalError | OSError | TimeoutError):
        return SourceUnavailable(f"postgres: {error}")
    if isinstance(error, psycopg.Error):
        return SourceBug(f"postgres: {error}")
    return None


postgres_boundary = boundary("postgres", classify_postgres)


class ShardError(IndexerError):
    """This shard cannot run under the shard plans in force (``indexer.shards``); the message
    says what to do. Not retried: waiting would not change the plan."""
