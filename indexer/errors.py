"""The indexer's own exceptions: driver errors are wrapped into these at each store's boundary.

The capture loop decides by class alone: ``SourceUnavailable`` and ``SinkUnavailable`` are
waited out and retried, the others are bugs or broken state that need a person.
"""

from __future__ import annotations


class IndexerError(Exception):
    """Base of every error the indexer raises on purpose."""


class SourceUnavailable(IndexerError):
    """Postgres cannot be reached or refused for a transient reason; retry later."""


class SinkUnavailable(IndexerError):
    """Elasticsearch or Redis cannot be reached; retry later."""


class SlotError(IndexerError):
    """A replication slot or publication operation failed for a non-transient reason."""


class PgOutputError(IndexerError):
    """A pgoutput message is malformed, or refers to a relation never described."""
