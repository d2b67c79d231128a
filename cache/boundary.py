"""One error boundary per store: where driver exceptions become ``cache.errors`` classes.

A store's interface class (``CacheStore`` for Redis, ``SearchReader`` and ``ElasticSink``
for Elasticsearch, ``DocumentSource`` for Postgres) decorates every public method with its
store's boundary; ``tests/unit/test_store_boundaries.py`` checks that none is missing. A
boundary is a classifier, a pure function from a driver exception to the project's error
(or ``None`` for anything that is not a driver error, which passes through untouched).

Postgres's classifier lives in ``indexer/source.py``: only the indexer may import psycopg.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import elastic_transport
import elasticsearch
from redis import exceptions as redis_errors

from cache.errors import (
    CacheBug,
    CacheUnavailable,
    SearchBug,
    SearchRejected,
    SearchUnavailable,
    StoreError,
)

Classifier = Callable[[BaseException], StoreError | None]
F = TypeVar("F", bound=Callable[..., Any])

# Marks a function wrapped by a boundary; the value is the store's name.
BOUNDARY_ATTRIBUTE: Final = "__store_boundary__"

# Redis answers these while it cannot serve for now (a replica syncing, a cluster failing
# over, memory full under noeviction): an outage, not a mistake of ours. redis-py turns some
# into their own classes with the prefix removed (OutOfMemoryError, BusyLoadingError).
_REDIS_TRANSIENT_REPLIES = ("LOADING", "BUSY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "OOM")
# A cluster client's own kinds of "not now": a failover in progress (CLUSTERDOWN, TRYAGAIN),
# a slot map it has not caught up with yet (a slot not covered, a redirect it gave up on, its
# redirections exhausted). A cross-slot call stays a bug: a RedisClusterException of its own.
_REDIS_TRANSIENT_CLASSES = (
    redis_errors.OutOfMemoryError,
    redis_errors.BusyLoadingError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.SlotNotCoveredError,
    redis_errors.MovedError,
    redis_errors.AskError,
    redis_errors.ClusterError,
)


def classify_redis(error: BaseException) -> StoreError | None:
    if isinstance(error, StoreError):
        return None
    if isinstance(
        error, redis_errors.ConnectionError | redis_errors.TimeoutError | OSError | TimeoutError
    ):
        return CacheUnavailable(f"redis: {error}")
    if isinstance(error, _REDIS_TRANSIENT_CLASSES) or (
        isinstance(error, redis_errors.ResponseError)
        and str(error).startswith(_REDIS_TRANSIENT_REPLIES)
    ):
        return CacheUnavailable(f"redis: {error}")
    if isinstance(error, redis_errors.RedisError | redis_errors.RedisClusterException):
        return CacheBug(f"redis: {error}")
    return None


def _error_type(error: elasticsearch.ApiError) -> str:
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("type"))
    return str(error.message)


def classify_elasticsearch(error: BaseException) -> StoreError | None:
    if isinstance(error, StoreError):
        return None
    if isinstance(error, elasticsearch.ApiError):
        status = error.meta.status
        if status == 429 or status >= 500:
            return SearchUnavailable(f"elasticsearch: {status} {error.message}")
        if status == 404 and _error_type(error) == "index_not_found_exception":
            # An alias not created yet or removed: the index is not there to answer.
            return SearchUnavailable(f"elasticsearch: index missing: {error.message}")
        if status == 400:
            return SearchRejected(f"elasticsearch: {error.message}")
        return SearchBug(f"elasticsearch: {status} {error.message}")
    if isinstance(error, elastic_transport.SerializationError):
        return SearchBug(f"elasticsearch: {error}")
    if isinstance(error, elasticsearch.TransportError | OSError | TimeoutError):
        return SearchUnavailable(f"elasticsearch: {error}")
    return None


def _raise_classified(classify: Classifier, error: BaseException) -> None:
    translated = classify(error)
    if translated is not None:
        raise translated from error


@contextmanager
def translating(classify: Classifier) -> Iterator[None]:
    """The boundary as a block, for the few places that are not a store method."""
    try:
        yield
    except Exception as error:
        _raise_classified(classify, error)
        raise


def boundary(store: str, classify: Classifier) -> Callable[[F], F]:
    """A decorator for a store's methods: coroutines, async generators and plain functions."""

    def decorate(function: F) -> F:
        wrapper: Callable[..., Any]
        if inspect.isasyncgenfunction(function):

            @functools.wraps(function)
            async def generator_wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                try:
                    # Closed here when the caller stops early, not whenever the collector
                    # gets to it: a generator may hold a cursor or a transaction open.
                    async with contextlib.aclosing(function(*args, **kwargs)) as items:
                        async for item in items:
                            yield item
                except Exception as error:
                    _raise_classified(classify, error)
                    raise

            wrapper = generator_wrapper
        elif inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def coroutine_wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await function(*args, **kwargs)
                except Exception as error:
                    _raise_classified(classify, error)
                    raise

            wrapper = coroutine_wrapper
        else:

            @functools.wraps(function)
            def function_wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    return function(*args, **kwargs)
                except Exception as error:
                    _raise_classified(classify, error)
                    raise

            wrapper = function_wrapper
        setattr(wrapper, BOUNDARY_ATTRIBUTE, store)
        return wrapper  # type: ignore[return-value]

    return decorate


redis_boundary = boundary("redis", classify_redis)
elasticsearch_boundary = boundary("elasticsearch", classify_elasticsearch)
