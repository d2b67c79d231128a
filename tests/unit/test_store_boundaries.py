"""One error boundary per store: every store method carries it, and it classifies driver
errors as the project's own (unavailable / rejected / bug) the same way on both sides."""

from __future__ import annotations

import inspect
from typing import Any

import elastic_transport
import elasticsearch
import psycopg
import pytest
from redis import exceptions as redis_errors

from cache.boundary import (
    BOUNDARY_ATTRIBUTE,
    classify_elasticsearch,
    classify_redis,
    elasticsearch_boundary,
    redis_boundary,
)
from cache.errors import (
    CacheBug,
    CacheUnavailable,
    SearchBug,
    SearchRejected,
    SearchUnavailable,
    StoreError,
    StoreUnavailable,
)
from cache.membership import MembershipStore
from cache.store import CacheStore
from indexer.errors import SourceBug, SourceUnavailable, classify_postgres
from indexer.quarantine import QuarantineStore
from indexer.sinks.elastic import ElasticSink
from indexer.source import DocumentSource
from readapi.dependency import DependencyGate
from readapi.elastic import SearchReader

# Every class that talks to a store, with the store whose boundary its methods must carry.
STORE_INTERFACES: list[tuple[type, str]] = [
    (CacheStore, "redis"),
    (MembershipStore, "redis"),
    (ElasticSink, "elasticsearch"),
    (SearchReader, "elasticsearch"),
    (DocumentSource, "postgres"),
    (QuarantineStore, "postgres"),
]


def _public_io_methods(cls: type) -> list[str]:
    names = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        function = inspect.unwrap(member) if callable(member) else None
        if function is not None and (
            inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)
        ):
            names.append(name)
    return names


@pytest.mark.parametrize(
    ("cls", "store"), STORE_INTERFACES, ids=lambda v: getattr(v, "__name__", v)
)
def test_every_store_method_goes_through_its_boundary(cls: type, store: str) -> None:
    methods = _public_io_methods(cls)
    assert methods, f"{cls.__name__} has no I/O method: the list above is stale"
    missing = [
        name for name in methods if getattr(vars(cls)[name], BOUNDARY_ATTRIBUTE, None) != store
    ]
    assert not missing, f"{cls.__name__} methods without the {store} boundary: {missing}"


def _api_error(status: int, error_type: str = "some_exception") -> elasticsearch.ApiError:
    meta = elastic_transport.ApiResponseMeta(
        status=status,
        http_version="1.1",
        headers=elastic_transport.HttpHeaders(),
        duration=0.0,
        node=elastic_transport.NodeConfig("http", "127.0.0.1", 9200),
    )
    body = {"error": {"type": error_type, "reason": "r"}, "status": status}
    return elasticsearch.ApiError(f"{status}", meta=meta, body=body)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_api_error(429, "es_rejected_execution_exception"), SearchUnavailable),
        (_api_error(500), SearchUnavailable),
        (_api_error(503), SearchUnavailable),
        (_api_error(404, "index_not_found_exception"), SearchUnavailable),
        (_api_error(400, "parsing_exception"), SearchRejected),
        (_api_error(405), SearchBug),
        (_api_error(413), SearchBug),
        (_api_error(404, "resource_not_found_exception"), SearchBug),
        (elasticsearch.ConnectionError("refused"), SearchUnavailable),
        (elasticsearch.ConnectionTimeout("slow"), SearchUnavailable),
        (elastic_transport.SerializationError("bad body"), SearchBug),
        (TimeoutError(), SearchUnavailable),
    ],
)
def test_elasticsearch_errors_are_classified(error: Exception, expected: type) -> None:
    assert type(classify_elasticsearch(error)) is expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (redis_errors.ConnectionError("refused"), CacheUnavailable),
        (redis_errors.TimeoutError("slow"), CacheUnavailable),
        (redis_errors.BusyLoadingError("LOADING Redis is loading"), CacheUnavailable),
        (redis_errors.ResponseError("OOM command not allowed"), CacheUnavailable),
        (redis_errors.OutOfMemoryError("command not allowed when used memory"), CacheUnavailable),
        (redis_errors.ResponseError("WRONGTYPE Operation against a key"), CacheBug),
        (redis_errors.DataError("bad argument"), CacheBug),
        (ConnectionResetError(), CacheUnavailable),
        # A cluster failing over or a slot map not caught up yet: an outage.
        (redis_errors.ClusterDownError("The cluster is down"), CacheUnavailable),
        (redis_errors.MasterDownError("Link with MASTER is down"), CacheUnavailable),
        (redis_errors.TryAgainError("Multiple keys request during rehashing"), CacheUnavailable),
        (redis_errors.SlotNotCoveredError('Slot "3342" is not covered'), CacheUnavailable),
        (redis_errors.MovedError("3999 127.0.0.1:7002"), CacheUnavailable),
        (redis_errors.ClusterError("TTL exhausted."), CacheUnavailable),
        # A call across slots is ours to fix.
        (redis_errors.RedisClusterException("all keys must map to the same slot"), CacheBug),
    ],
)
def test_redis_errors_are_classified(error: Exception, expected: type) -> None:
    assert type(classify_redis(error)) is expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (psycopg.OperationalError("server closed the connection"), SourceUnavailable),
        (psycopg.errors.AdminShutdown("terminating"), SourceUnavailable),
        (psycopg.DataError("timestamp too large"), SourceBug),
        (psycopg.ProgrammingError("syntax error"), SourceBug),
    ],
)
def test_postgres_errors_are_classified(error: Exception, expected: type) -> None:
    assert type(classify_postgres(error)) is expected


@pytest.mark.parametrize("classify", [classify_redis, classify_elasticsearch, classify_postgres])
def test_what_is_not_a_driver_error_passes_through(classify: Any) -> None:
    assert classify(ValueError("ours")) is None
    assert classify(SearchUnavailable("already ours")) is None


async def test_the_boundary_wraps_coroutines_and_async_generators() -> None:
    class Store:
        @redis_boundary
        async def read(self) -> None:
            raise redis_errors.ConnectionError("refused")

        @elasticsearch_boundary
        async def pages(self) -> Any:
            yield 1
            raise _api_error(503)

        @redis_boundary
        async def ours(self) -> None:
            raise KeyError("not a driver error")

    store = Store()
    with pytest.raises(CacheUnavailable) as caught:
        await store.read()
    assert isinstance(caught.value.__cause__, redis_errors.ConnectionError)
    seen = []
    with pytest.raises(SearchUnavailable):
        async for page in store.pages():
            seen.append(page)
    assert seen == [1]
    with pytest.raises(KeyError):
        await store.ours()


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def _raising(error: Exception) -> Any:
    raise error


@pytest.mark.parametrize(
    ("error", "raised", "marks_down"),
    [
        (_api_error(503), SearchUnavailable, True),
        (_api_error(429), SearchUnavailable, True),
        (_api_error(400), SearchRejected, False),
        (_api_error(405), SearchBug, False),
    ],
)
async def test_only_outages_mark_elasticsearch_down_in_the_read_api(
    error: Exception, raised: type[StoreError], marks_down: bool
) -> None:
    gate = DependencyGate("elasticsearch", 0.5, _Clock())
    reader = SearchReader(elasticsearch.AsyncElasticsearch("http://127.0.0.1:1"), "t_", gate)
    try:
        with pytest.raises(raised):
            await reader._call("search", _raising(error))
    finally:
        await reader.client.close()
    assert gate.up is not marks_down
    assert issubclass(raised, StoreUnavailable) is marks_down
