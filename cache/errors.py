"""The cache layer's own exceptions: driver errors are translated into these at the boundary.

Callers (the indexer's Redis sink, the read API) catch these and never a ``redis`` exception,
so the driver can change without touching them.
"""

from __future__ import annotations


class CacheError(Exception):
    """Any failure of the cache layer that is not one of the more precise errors below."""


class CacheUnavailable(CacheError):
    """Redis could not be reached in time (connection refused or lost, timeout, loading)."""


class CacheDecodeError(CacheError):
    """Bytes read from Redis or from the invalidation channel are not what the codec writes."""
