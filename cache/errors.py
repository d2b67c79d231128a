"""The project's own store errors: driver exceptions become these at each store's boundary
(``cache/boundary.py`` for Redis and Elasticsearch, ``indexer/source.py`` for Postgres).

Callers decide by class alone, never by a driver exception:

- ``StoreUnavailable``: the store cannot answer now (down, timing out, overloaded: 429 and
  5xx of Elasticsearch, Redis loading). Wait and retry; the read API answers 503.
- ``StoreRejected``: the store refused a request built from a client's input as malformed
  (an Elasticsearch 400 on a search). The read API answers 400.
- ``StoreBug``: the store refused a request that we built wrongly (any other 4xx, a Redis
  command error). Retrying cannot help; it is logged as a bug, never counted as an outage.
"""

from __future__ import annotations


class StoreError(Exception):
    """Any failure of a store, classified by the subclasses below."""


class StoreUnavailable(StoreError):
    """The store cannot answer now; the same request may succeed later."""


class StoreRejected(StoreError):
    """The store refused a request as malformed, for a reason that lies in a client's input."""


class StoreBug(StoreError):
    """The store refused a request of ours that no retry and no client can fix."""


class CacheError(StoreError):
    """Any failure of Redis that is not one of the more precise errors below."""


class CacheUnavailable(CacheError, StoreUnavailable):
    """Redis could not be reached in time (connection refused or lost, timeout, loading)."""


class CacheBug(CacheError, StoreBug):
    """Redis refused a command of ours (wrong type, script error)."""


class CacheDecodeError(CacheError):
    """Bytes read from Redis or from the invalidation channel are not what the codec writes."""


class SearchError(StoreError):
    """Any failure of Elasticsearch."""


class SearchUnavailable(SearchError, StoreUnavailable):
    """Elasticsearch could not answer (down, timing out, overloaded, index missing)."""


class SearchRejected(SearchError, StoreRejected):
    """Elasticsearch refused a search as malformed (HTTP 400)."""


class SearchBug(SearchError, StoreBug):
    """Elasticsearch refused a request of ours (a 4xx other than 400 and 429)."""
