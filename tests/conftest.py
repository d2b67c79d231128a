"""Test fixtures shared by every suite.

Integration and fault tests talk to the real services of the local stack (``stack up``):
each test gets a fresh database cloned from a migrated template, its own Elasticsearch
index prefix and its own Redis key prefix, and everything is removed afterwards.
Unit tests under ``tests/unit`` use none of these fixtures and need no service.

Databases are made and dropped as the admin (``LOYALTY_PG_ADMIN_DSN``), and ``pg_dsn`` is the
admin's too: tests run the indexer as the tables' owner, so each needs no setup of its own.
``tests/integration/test_credentials.py`` runs it as its own role, as deployed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from elasticsearch import AsyncElasticsearch
from psycopg import sql
from redis.asyncio import RedisCluster

from cache.config import DEFAULT_ES_URL, DEFAULT_REDIS_URL
from cache.connect import RedisClient, redis_from_url
from indexer.settings import DEFAULT_PG_ADMIN_DSN
from tests.fixtures.databases import drop_database

# The defaults are the product's own (the local stack's, with its passwords); an empty
# variable counts as unset, as for the product.
PG_ADMIN_DSN = os.environ.get("LOYALTY_PG_ADMIN_DSN") or DEFAULT_PG_ADMIN_DSN
REDIS_URL = os.environ.get("LOYALTY_REDIS_URL") or DEFAULT_REDIS_URL
ES_URL = os.environ.get("LOYALTY_ES_URL") or DEFAULT_ES_URL
# One template per test session: concurrent sessions must not drop each other's.
TEMPLATE_DB = f"loyalty_test_template_{uuid.uuid4().hex[:8]}"

pytest_plugins = [
    "tests.fixtures.indexer", "tests.fixtures.readapi", "tests.fixtures.faults",
    "tests.fixtures.redis_cluster",
]

# The fixtures that reach a service of the local stack; a test using one of them, directly or
# through another fixture, must be marked ``services`` so ``-m "not services"`` needs no stack.
SERVICE_FIXTURES = frozenset({
    "pg_template", "pg_database", "pg_dsn", "redis_client", "es_client",
    "harness", "api", "fault_env", "private_stack", "redis_cluster", "redis_url_each",
})


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail, before any fixture runs, a test that uses the stack without the ``services`` mark."""
    if item.get_closest_marker("services") is not None:
        return
    used = sorted(SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())))
    if used:
        pytest.fail(
            f"{item.nodeid} uses {', '.join(used)} (the local stack) but is not marked "
            "services: add `pytestmark = pytest.mark.services` to its module",
            pytrace=False,
        )


def _dsn_for(database: str) -> str:
    return psycopg.conninfo.make_conninfo(PG_ADMIN_DSN, dbname=database)


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(_dsn_for("postgres"), autocommit=True)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database with the contract schema applied, cloned by every test database."""
    from indexer.migrate import apply_migrations

    with _admin() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(TEMPLATE_DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    apply_migrations(_dsn_for(TEMPLATE_DB))
    yield TEMPLATE_DB
    with _admin() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(TEMPLATE_DB)))


def _drop_database(name: str) -> None:
    drop_database(_dsn_for("postgres"), name)


@pytest.fixture
def pg_database(pg_template: str) -> Iterator[str]:
    """Name of a fresh, migrated database for this test only."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(pg_template)))
    try:
        yield name
    finally:
        _drop_database(name)


@pytest.fixture
def pg_dsn(pg_database: str) -> str:
    """DSN of this test's own database, as the admin."""
    return _dsn_for(pg_database)


@pytest.fixture
def unique_name() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def redis_prefix(unique_name: str) -> str:
    return f"t{unique_name}:"


@pytest.fixture
def es_prefix(unique_name: str) -> str:
    return f"t{unique_name}_"


@pytest.fixture
def redis_url() -> str:
    """The Redis ``redis_client`` talks to; a module overrides it to test on a cluster too
    (``redis_url_each``)."""
    return REDIS_URL


@pytest.fixture
async def redis_client(redis_prefix: str, redis_url: str) -> AsyncIterator[RedisClient]:
    """A Redis client; every key under this test's prefix is deleted afterwards."""
    # No socket timeout, as redis-py's default for one server (a cluster client's is 5 s):
    # the tests of blocking reads choose their own waits.
    client = redis_from_url(redis_url, socket_timeout=None)
    if isinstance(client, RedisCluster):
        await client.initialize()  # the slot map, for the tests that route by it
    try:
        yield client
    finally:
        keys = [key async for key in client.scan_iter(match=f"{redis_prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
async def es_client(es_prefix: str) -> AsyncIterator[AsyncElasticsearch]:
    """An Elasticsearch client; this test's indices and aliases are deleted afterwards."""
    client = AsyncElasticsearch(ES_URL, request_timeout=30)
    try:
        yield client
    finally:
        await client.options(ignore_status=404).indices.delete(
            index=f"{es_prefix}*", expand_wildcards="all")
        await client.close()
