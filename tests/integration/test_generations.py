"""Reloads into a new generation of indices while the old one answers: after a replication
slot dropped from outside or invalidated by ``max_slot_wal_keep_size`` (seen once: a log
line, a metric), and after an upgrade that changes the mapping version. The aliases move when
the new generation is complete, and verify is clean."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from cache.readmodel.indices import MAPPING_VERSION
from cache.types import ObjectKind
from indexer import rebuild
from indexer.commands import gather_status
from indexer.documents import Document
from indexer.migrate import apply_migrations
from indexer.reindex import Outcome
from indexer.runner import Indexer
from stack import config as stack_config
from stack.postgres import Postgres
from tests.fixtures.faults import free_port
from tests.fixtures.indexer import IndexerHarness, harness_settings, prepared_harness
from tests.integration.test_indexer_changes import seed_base
from tests.integration.test_verify import GOLD

pytestmark = pytest.mark.services

P = "proj_a"


def _losses(reason: str) -> float:
    value = REGISTRY.get_sample_value("indexer_slot_losses_total", {"reason": reason})
    return value or 0.0


async def _serving_index(h: IndexerHarness) -> str:
    found = await h.clients.elastic.indices.get_alias(name=f"{h.settings.es_index_prefix}vouchers")
    return next(iter(found))


def _watch_the_switch(h: IndexerHarness) -> dict[str, Any]:
    """What readers had at the moment the aliases moved: the index behind the alias and the
    documents it answered with."""
    seen: dict[str, Any] = {}
    search = h.clients.search
    switch = search.switch_to

    async def observing(generation: int, **options: Any) -> None:
        seen["serving"] = await _serving_index(h)
        count = await h.clients.elastic.count(index=f"{h.settings.es_index_prefix}vouchers")
        seen["documents"] = count["count"]
        await switch(generation, **options)

    search.switch_to = observing  # type: ignore[method-assign]
    return seen


class _Reader:
    """Counts the vouchers through the alias in a loop, as lists and searches do, recording
    every answer and every error until stopped."""

    def __init__(self, h: IndexerHarness) -> None:
        self._h = h
        self.counts: set[int] = set()
        self.errors: list[str] = []
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        alias = f"{self._h.settings.es_index_prefix}vouchers"
        while True:
            try:
                found = await self._h.clients.elastic.count(index=alias)
                self.counts.add(found["count"])
            except Exception as error:
                self.errors.append(repr(error))
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def _run_until(h: IndexerHarness, done: Callable[[], Awaitable[bool]]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(h.indexer.run(stop))
    try:
        for _ in range(600):
            if task.done():
                task.result()
                raise AssertionError("the indexer stopped on its own")
            if await done():
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the indexer did not recover in 60 s")
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def _recovers_from_a_lost_slot(
    h: IndexerHarness, lose_the_slot: Callable[[], Awaitable[None]], reason: str
) -> None:
    await seed_base(h)
    await h.execute(GOLD)
    await h.catch_up()
    await h.clients.search.refresh()  # what the reader counts from the start
    old_index = await _serving_index(h)
    assert (await h.clients.cache.membership.counts(P, ["seg_gold"])) == {"seg_gold": 1}
    seen = _watch_the_switch(h)
    before = _losses(reason)

    await lose_the_slot()
    # Changes the lost slot can no longer give: only a new snapshot sees them.
    await h.execute("UPDATE vouchers SET code = 'SUMMER-9' WHERE id = 'v_1'")
    await h.execute("DELETE FROM customers WHERE id = 'cust_1'")

    async def rebuilt() -> bool:
        doc = await h.es_doc("voucher", "v_1")
        return doc is not None and doc["doc"]["code"] == "SUMMER-9"

    reader = _Reader(h)
    await _run_until(h, rebuilt)
    await reader.stop()

    # Readers had the old generation, whole, until the new one was complete.
    assert seen == {"serving": old_index, "documents": 3}
    assert (reader.counts, reader.errors) == ({3}, [])
    new_index = await _serving_index(h)
    assert new_index != old_index
    assert not await h.clients.elastic.indices.exists(index=old_index)
    assert _losses(reason) == before + 1
    assert await h.redis_doc("customer", P, "cust_1") is None
    # The deleted customer's membership record was emptied after the load, and counted out.
    assert (await h.clients.cache.membership.counts(P, ["seg_gold"])) == {"seg_gold": 0}
    report = await h.verify()
    assert report.ok, report.differences
    # Streaming goes on from the new slot.
    await h.execute("UPDATE vouchers SET code = 'SUMMER-10' WHERE id = 'v_1'")
    await h.catch_up()
    doc = await h.es_doc("voucher", "v_1")
    assert doc is not None and doc["doc"]["code"] == "SUMMER-10"


async def test_a_slot_dropped_while_the_indexer_runs_is_rebuilt_while_the_old_generation_serves(
    harness: IndexerHarness, caplog: pytest.LogCaptureFixture
) -> None:
    async def drop() -> None:
        await harness.execute("SELECT pg_drop_replication_slot(%s)", (harness.settings.slot_name,))

    with caplog.at_level(logging.ERROR, logger="indexer.runner"):
        await _recovers_from_a_lost_slot(harness, drop, "dropped")
    lines = [r for r in caplog.records if r.getMessage().startswith("replication slot lost")]
    assert len(lines) == 1 and getattr(lines[0], "reason", None) == "dropped"


@contextlib.contextmanager
def _private_postgres() -> Iterator[Postgres]:
    root = Path(tempfile.mkdtemp(prefix="loyalty-slot-loss-"))
    root.chmod(0o755)  # Postgres runs as its own user, who must reach its folder in here
    config = stack_config.StackConfig(
        stack_dir=root, pg_port=free_port(), redis_port=free_port(), es_port=free_port()
    )
    postgres = Postgres(config, lambda service, message: None)
    try:
        postgres.up()
        yield postgres
    finally:
        with contextlib.suppress(Exception):
            postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def private_harness(
    es_prefix: str, redis_prefix: str, unique_name: str, es_client: Any, redis_client: Any
) -> AsyncIterator[IndexerHarness]:
    """An indexer on a Postgres of its own, whose ``max_slot_wal_keep_size`` is tiny."""
    with _private_postgres() as postgres:
        dsn = postgres.dsn()
        await asyncio.to_thread(apply_migrations, dsn)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
            await admin.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
            await admin.execute("SELECT pg_reload_conf()")
        settings = harness_settings(dsn, es_prefix, redis_prefix, unique_name)
        async with prepared_harness(settings) as prepared:
            yield prepared


async def test_a_slot_invalidated_by_max_slot_wal_keep_size_is_rebuilt(
    private_harness: IndexerHarness,
) -> None:
    h = private_harness

    async def invalidate() -> None:
        # WAL beyond the slot's allowance, then a checkpoint: Postgres marks it lost.
        await h.execute("CREATE TABLE IF NOT EXISTS filler (note text)")
        for _ in range(20):
            for _ in range(4):
                await h.execute("INSERT INTO filler VALUES (repeat('x', 1000))")
                await h.execute("SELECT pg_switch_wal()")
            await h.execute("CHECKPOINT")
            cursor = await h.db.execute(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s",
                (h.settings.slot_name,),
            )
            row = await cursor.fetchone()
            if row is not None and row[0] == "lost":
                return
        raise AssertionError("the slot was not invalidated")

    await _recovers_from_a_lost_slot(h, invalidate, "invalidated")


async def test_an_upgrade_changing_the_mapping_version_rebuilds_while_the_old_generation_serves(
    harness: IndexerHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release whose mapping and document shape changed: ``indexer run`` finds the
    indices' stamped version differs and builds the new generation in the background while
    the old one serves and the loop keeps applying changes; every document gets the new
    shape."""
    h = harness
    await seed_base(h)
    await h.catch_up()
    await h.clients.search.refresh()  # what the reader counts from the start
    old_index = await _serving_index(h)
    seen = _watch_the_switch(h)
    for module in ("indexer.runner", "indexer.snapshot", "indexer.reindex"):
        monkeypatch.setattr(f"{module}.MAPPING_VERSION", MAPPING_VERSION + 1)
    # The new release's vouchers carry a field the old ones lack.
    build_voucher = rebuild._BUILDERS[ObjectKind.VOUCHER]

    def reshaped(row: Any) -> Document:
        document = build_voucher(row)
        return dataclasses.replace(document, fields={**document.fields, "shape": 2})

    monkeypatch.setitem(rebuild._BUILDERS, ObjectKind.VOUCHER, reshaped)

    reader = _Reader(h)
    upgraded = Indexer(h.settings, h.clients.search, h.clients.cache)
    try:
        await upgraded.prepare()
        assert upgraded.upgrade.running and upgraded.prepared_at is not None
        # Applied by the loop to the old generation, and caught up into the new one.
        await h.execute("UPDATE vouchers SET code = 'SUMMER-2' WHERE id = 'v_1'")
        async with asyncio.timeout(60):
            while upgraded.upgrade.running:
                await upgraded.step()
                await asyncio.sleep(0.01)
        outcome = await upgraded.upgrade.wait()
        await upgraded.step()
    finally:
        await reader.stop()
        await upgraded.close()

    assert outcome is Outcome.COMPLETE
    assert seen == {"serving": old_index, "documents": 3}
    assert (reader.counts, reader.errors) == ({3}, [])
    meta = await h.clients.search.indices_ready()
    assert meta is not None and meta["mapping"] == MAPPING_VERSION + 1
    assert meta["state"] == "complete"
    assert await _serving_index(h) != old_index
    assert not await h.clients.elastic.indices.exists(index=old_index)
    await h.clients.search.refresh()
    hits = await h.clients.elastic.search(
        index=f"{h.settings.es_index_prefix}vouchers", size=10, query={"match_all": {}}
    )
    assert [hit["_source"].get("shape") for hit in hits["hits"]["hits"]] == [2, 2, 2]
    doc = await h.es_doc("voucher", "v_1")
    assert doc is not None and doc["doc"]["code"] == "SUMMER-2"
    assert (await h.verify()).ok


async def test_a_reload_that_dies_before_its_switch_runs_again_on_restart(
    harness: IndexerHarness,
) -> None:
    """The serving generation is marked replaced before the new slot exists, so a restart
    does not stream from that new slot into indices that missed what came before it."""
    h = harness
    await seed_base(h)
    await h.catch_up()
    await h.execute("SELECT pg_drop_replication_slot(%s)", (h.settings.slot_name,))

    async def dies(generation: int) -> None:
        raise RuntimeError("killed before the switch")

    h.clients.search.switch_to = dies  # type: ignore[method-assign]
    await h.execute("UPDATE vouchers SET code = 'SUMMER-9' WHERE id = 'v_1'")
    with pytest.raises(RuntimeError):
        await h.indexer.prepare()
    meta = await h.clients.search.indices_ready()
    assert meta is not None and meta["state"] == "replaced"
    del h.clients.search.switch_to

    restarted = Indexer(h.settings, h.clients.search, h.clients.cache)
    try:
        await restarted.prepare()
    finally:
        await restarted.close()
    doc = await h.es_doc("voucher", "v_1")
    assert doc is not None and doc["doc"]["code"] == "SUMMER-9"
    assert (await h.verify()).ok


async def test_status_shows_the_serving_generations_stamp(harness: IndexerHarness) -> None:
    await seed_base(harness)
    await harness.catch_up()
    await harness.clients.search.refresh()
    status = await gather_status(harness.settings)
    assert status["indices"] == {
        "state": "complete",
        "mapping": MAPPING_VERSION,
        "consistent_point": status["indices"]["consistent_point"],
    }
    assert status["documents"]["voucher"] == 3 and "slot_exists" not in status
