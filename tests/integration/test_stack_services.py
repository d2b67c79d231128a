"""The services started by ``stack up`` behave as the read path relies on.

Elasticsearch: the banner clients check, realtime GET, search and external versions.
Postgres: logical decoding with an exported snapshot and pgoutput by SQL; a password on every
connection and the indexer's role, which is not a superuser.
Redis: version 7 and Lua scripting; its password, memory bound and eviction policy.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis
import redis.asyncio as aioredis
from elasticsearch import AsyncElasticsearch, ConflictError
from psycopg import sql

from stack import config as stack_config

pytestmark = pytest.mark.services


# --- Elasticsearch -------------------------------------------------------------------------------


async def test_elasticsearch_banner(es_client: AsyncElasticsearch) -> None:
    info = await es_client.info()

    assert info["version"]["number"].startswith("8.19.")
    assert info.meta.headers.get("X-Elastic-Product") == "Elasticsearch"


async def test_elasticsearch_index_get_search(
    es_client: AsyncElasticsearch, es_prefix: str
) -> None:
    index = f"{es_prefix}probe"
    await es_client.indices.create(
        index=index,
        mappings={"properties": {"code": {"type": "keyword"}, "amount": {"type": "long"}}},
    )
    await es_client.index(index=index, id="v1", document={"code": "SUMMER", "amount": 10})

    # No refresh in between: a GET must read its own write (realtime).
    got = await es_client.get(index=index, id="v1")
    assert got["found"] is True
    assert got["_source"] == {"code": "SUMMER", "amount": 10}

    await es_client.indices.refresh(index=index)
    found = await es_client.search(index=index, query={"term": {"code": "SUMMER"}})
    assert [hit["_id"] for hit in found["hits"]["hits"]] == ["v1"]


async def test_elasticsearch_external_gte_versions(
    es_client: AsyncElasticsearch, es_prefix: str
) -> None:
    index = f"{es_prefix}versions"
    await es_client.indices.create(index=index)
    await es_client.index(index=index, id="v1", document={"state": "new"}, version=10,
                          version_type="external_gte")

    with pytest.raises(ConflictError):
        await es_client.index(index=index, id="v1", document={"state": "older"}, version=9,
                              version_type="external_gte")
    # An equal version is a replay and must be accepted.
    await es_client.index(index=index, id="v1", document={"state": "replayed"}, version=10,
                          version_type="external_gte")

    got = await es_client.get(index=index, id="v1")
    assert got["_version"] == 10
    assert got["_source"] == {"state": "replayed"}


# --- Postgres ------------------------------------------------------------------------------------


@pytest.fixture
def probe_table(pg_dsn: str) -> Iterator[tuple[str, str]]:
    """A table with one row and a publication for it, in this test's own database."""
    suffix = uuid.uuid4().hex[:8]
    table, publication = f"stack_probe_{suffix}", f"stack_pub_{suffix}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, note text NOT NULL)").format(
            sql.Identifier(table)))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'before the slot')").format(
            sql.Identifier(table)))
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
            sql.Identifier(publication), sql.Identifier(table)))
    yield table, publication


def test_postgres_asks_for_a_password_and_has_the_indexer_role(pg_dsn: str) -> None:
    options = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    options.pop("password", None)
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(psycopg.conninfo.make_conninfo("", **options), connect_timeout=10).close()
    with psycopg.connect(pg_dsn) as conn:
        role = conn.execute(
            "SELECT rolsuper, rolreplication, rolcanlogin FROM pg_roles WHERE rolname = %s",
            (stack_config.PG_INDEXER_ROLE,),
        ).fetchone()
    assert role == (False, True, True)


def test_postgres_wal_level_is_logical(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SHOW wal_level").fetchone()
    assert row == ("logical",)


def test_postgres_exported_snapshot_and_pgoutput(
    pg_dsn: str, probe_table: tuple[str, str]
) -> None:
    table, publication = probe_table
    slot = f"stack_slot_{uuid.uuid4().hex[:8]}"
    select_ids = sql.SQL("SELECT id FROM {} ORDER BY id").format(sql.Identifier(table))

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        try:
            with psycopg.connect(pg_dsn, autocommit=True, replication="database") as replication:
                created = replication.execute(
                    sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')")
                    .format(sql.Identifier(slot))
                ).fetchone()
                assert created is not None
                snapshot_name = created[2]

                with conn.transaction():
                    # The stack runs with asynchronous commits, and decoding by SQL only sees
                    # flushed WAL: make this one commit durable so the peek below finds it.
                    conn.execute("SET LOCAL synchronous_commit = on")
                    conn.execute(sql.SQL("INSERT INTO {} VALUES (2, 'after the slot')").format(
                        sql.Identifier(table)))

                # The exported snapshot is usable only while the replication connection is open.
                with psycopg.connect(pg_dsn, autocommit=True) as reader:
                    reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                    reader.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
                        sql.Literal(snapshot_name)))
                    as_of_slot = reader.execute(select_ids).fetchall()
                    reader.execute("COMMIT")
            assert as_of_slot == [(1,)]
            assert conn.execute(select_ids).fetchall() == [(1,), (2,)]

            changes = conn.execute(
                "SELECT data FROM pg_logical_slot_peek_binary_changes("
                "%s, NULL, 100, 'proto_version', '1', 'publication_names', %s)",
                (slot, publication),
            ).fetchall()
            kinds = [bytes(row[0][:1]) for row in changes]
            assert kinds == [b"B", b"R", b"I", b"C"]
        finally:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s", (slot,))


# --- Redis ---------------------------------------------------------------------------------------


async def test_redis_version_and_lua(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    server = await redis_client.info("server")
    assert str(server["redis_version"]).startswith("7.")

    key = f"{redis_prefix}lua"
    script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])"
    result = await redis_client.eval(script, 1, key, "from-lua")
    assert result == b"from-lua"


async def test_redis_requires_its_password(redis_client: aioredis.Redis) -> None:
    where = redis_client.connection_pool.connection_kwargs
    anonymous = aioredis.Redis(host=where["host"], port=where["port"])
    try:
        with pytest.raises(redis.AuthenticationError):
            await anonymous.ping()
    finally:
        await anonymous.aclose()
    memory = await redis_client.config_get("maxmemory*")
    assert int(memory["maxmemory"]) > 0
    assert memory["maxmemory-policy"] == stack_config.REDIS_MAXMEMORY_POLICY
