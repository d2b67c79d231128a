"""Request-level refusals of a bulk write, on Elasticsearch nodes of our own whose limits are
tiny: a request too large (413) is split down to single documents and a document too large
alone is quarantined; an overloaded node (429) is waited out and the batch retried."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import psycopg
import pytest
from prometheus_client import REGISTRY

from cache.errors import SearchUnavailable
from indexer.commands import open_clients
from indexer.runner import Indexer
from indexer.settings import IndexerSettings
from tests.fixtures.faults import PrivateStack, eventually, private_stack_dir
from tests.fixtures.indexer import IndexerHarness, harness_settings

pytestmark = [
    pytest.mark.services,
    # The node's launcher outlives the Popen object that started it (stack/ stops it by pid).
    pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning"),
]

MAX_CONTENT = 16 * 1024  # bytes a request of this node may carry


@pytest.fixture(scope="module")
def small_node() -> Iterator[PrivateStack]:
    """An Elasticsearch node of our own that refuses requests over 16 KiB with 413."""
    with private_stack_dir() as stack:
        stack.config = dataclasses.replace(
            stack.config, es_node_settings=(("http.max_content_length", f"{MAX_CONTENT}b"),)
        )
        stack.elasticsearch().up()
        yield stack


@contextlib.asynccontextmanager
async def indexer_on(settings: IndexerSettings, pg_dsn: str) -> AsyncIterator[IndexerHarness]:
    db = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    async with open_clients(settings) as clients:
        indexer = Indexer(settings, clients.search, clients.cache)
        try:
            yield IndexerHarness(settings, clients, indexer, db)
        finally:
            await indexer.close()
            await clients.elastic.options(ignore_status=404).indices.delete(
                index=f"{settings.es_index_prefix}*", expand_wildcards="all"
            )
            await db.close()


def metadata_of(size: int, seed: int) -> str:
    # Incompressible words: the bulk body grows with them.
    return orjson.dumps({"notes": [f"{seed:04d}-{i:06d}" for i in range(size // 14)]}).decode()


async def test_a_request_too_large_is_split_and_a_document_too_large_quarantined(
    small_node: PrivateStack,
    pg_dsn: str,
    es_prefix: str,
    redis_prefix: str,
    unique_name: str,
    redis_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = dataclasses.replace(
        harness_settings(pg_dsn, es_prefix, redis_prefix, unique_name),
        es_url=small_node.es_url,
    )
    caplog.set_level(logging.INFO, logger="indexer")
    async with indexer_on(settings, pg_dsn) as h:
        await h.indexer.prepare()
        await h.execute("INSERT INTO projects (id, name) VALUES ('p', 'P')")
        async with h.db.transaction():
            for number in range(24):  # about 3 KiB each: 70 KiB in one chunk
                await h.execute(
                    "INSERT INTO vouchers (id, project_id, code, type, metadata) "
                    "VALUES (%s, 'p', %s, 'GIFT_VOUCHER', %s::jsonb)",
                    (f"v{number:02d}", f"CODE-{number}", metadata_of(3000, number)),
                )
            await h.execute(
                "INSERT INTO vouchers (id, project_id, code, type, metadata) "
                "VALUES ('huge', 'p', 'HUGE', 'GIFT_VOUCHER', %s::jsonb)",
                (metadata_of(4 * MAX_CONTENT, 99),),
            )
        await h.catch_up()
        for number in range(24):
            document = await h.es_doc("voucher", f"v{number:02d}")
            assert document is not None, number
        assert await h.es_doc("voucher", "huge") is None
        cursor = await h.db.execute(
            "SELECT table_name, row_id, reason FROM loyalty_indexer.quarantine"
        )
        rows = await cursor.fetchall()
        assert [(table, row_id) for table, row_id, _ in rows] == [("vouchers", "huge")]
        assert "413" in rows[0][2] and "too large" in rows[0][2]
        # Later changes flow as usual.
        await h.execute("UPDATE vouchers SET active = false WHERE id = 'v03'")
        await h.catch_up()
        document = await h.es_doc("voucher", "v03")
        assert document is not None and document["doc"]["active"] is False
        logged = [r for r in caplog.records if r.getMessage() == "row quarantined"]
        assert len(logged) == 1


async def test_an_overloaded_node_is_waited_out(
    pg_dsn: str,
    es_prefix: str,
    redis_prefix: str,
    unique_name: str,
    redis_client: Any,
) -> None:
    """A node whose indexing pressure limit refuses every bulk request (429) until it is
    restarted with the default limit: the loop waits, then writes the batch."""
    with private_stack_dir() as stack:
        stack.config = dataclasses.replace(
            stack.config, es_node_settings=(("indexing_pressure.memory.limit", "64b"),)
        )
        await stack.start(stack.elasticsearch())
        settings = dataclasses.replace(
            harness_settings(pg_dsn, es_prefix, redis_prefix, unique_name),
            es_url=stack.es_url,
        )
        async with indexer_on(settings, pg_dsn) as h:
            await h.indexer.prepare()
            await h.execute("INSERT INTO projects (id, name) VALUES ('p', 'P')")
            await h.execute(
                "INSERT INTO vouchers (id, project_id, code, type) "
                "VALUES ('v1', 'p', 'A', 'GIFT_VOUCHER')"
            )
            with pytest.raises(SearchUnavailable, match="429"):
                await h.catch_up(max_steps=1)
            before = (
                REGISTRY.get_sample_value("indexer_retries_total", {"cause": "SearchUnavailable"})
                or 0.0
            )
            stop = asyncio.Event()
            loop = asyncio.create_task(h.indexer.run(stop))
            try:

                async def retried() -> bool:
                    value = REGISTRY.get_sample_value(
                        "indexer_retries_total", {"cause": "SearchUnavailable"}
                    )
                    return (value or 0.0) >= before + 2

                await eventually(retried, within=60, what="the loop retries the batch")
                assert not loop.done()
                await stack.stop(stack.elasticsearch())
                stack.config = dataclasses.replace(stack.config, es_node_settings=())
                await stack.start(stack.elasticsearch())

                async def written() -> bool:
                    return await h.es_doc("voucher", "v1") is not None

                await eventually(written, within=120, what="the batch is written")
            finally:
                stop.set()
                await asyncio.wait_for(loop, timeout=60)
            cursor = await h.db.execute("SELECT count(*) FROM loyalty_indexer.quarantine")
            assert await cursor.fetchone() == (0,)
