"""What one batch holds stays bounded whatever the change: a transaction of many times the
batch size is read and applied in parts, a renamed campaign's vouchers and a truncate's
objects are rebuilt a chunk at a time; the outcome is the same as for small changes."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cache.types import ObjectKind
from indexer.changes import TouchedObjects
from indexer.pgoutput import Transaction
from indexer.rebuild import Rebuilder, SinkWrites
from indexer.settings import IndexerSettings
from tests.fixtures.indexer import IndexerHarness, prepared_harness
from tests.integration.test_indexer_changes import seed_base

pytestmark = pytest.mark.services

P = "proj_a"
BATCH = 50
ROWS = 20 * BATCH


@pytest.fixture
async def small(base_settings: IndexerSettings) -> AsyncIterator[IndexerHarness]:
    """An indexer whose batches and rebuild chunks hold ``BATCH`` changes and objects."""
    settings = dataclasses.replace(base_settings, batch_changes=BATCH, rebuild_chunk_ids=BATCH)
    async with prepared_harness(settings) as prepared:
        yield prepared


class _Observed:
    """Sizes of what the indexer applied: changes per ``apply`` call and documents per chunk
    written to the sinks."""

    def __init__(self, h: IndexerHarness, monkeypatch: pytest.MonkeyPatch) -> None:
        self.applied: list[int] = []
        self.partial: list[bool] = []
        self.chunks: list[int] = []
        # Objects marked for rebuild at once: fan-out too wide to hold is not marked.
        self.marked: list[int] = []
        indexer = h.indexer
        apply, write_both = indexer.apply, indexer._write_both

        async def counting_apply(transactions: list[Transaction]) -> bool:
            self.applied.append(sum(len(t.changes) for t in transactions))
            self.partial.extend(t.partial for t in transactions)
            return await apply(transactions)

        async def counting_write(conn: Any, chunk: SinkWrites) -> None:
            self.chunks.append(len(chunk.documents) + len(chunk.removed))
            await write_both(conn, chunk)

        expand = Rebuilder.expand

        async def counting_expand(
            rebuilder: Rebuilder, touched: TouchedObjects, existing: Any
        ) -> None:
            await expand(rebuilder, touched, existing)
            self.marked.append(len(touched.objects))

        monkeypatch.setattr(Rebuilder, "expand", counting_expand)
        indexer.apply = counting_apply  # type: ignore[method-assign]
        indexer._write_both = counting_write  # type: ignore[method-assign]


async def _vouchers(h: IndexerHarness, count: int) -> None:
    await h.execute(
        "INSERT INTO vouchers (id, project_id, code, campaign_id, type) "
        "SELECT 'bulk_' || lpad(g::text, 5, '0'), 'proj_a', 'BULK-' || g, 'camp_1', "
        "'DISCOUNT_VOUCHER' FROM generate_series(1, %s) g",
        (count,),
    )


async def _seeded(h: IndexerHarness, monkeypatch: pytest.MonkeyPatch) -> _Observed:
    """``seed_base`` and ``ROWS`` vouchers of camp_1, indexed; then watched."""
    await seed_base(h)
    await _vouchers(h, ROWS)
    await h.catch_up()
    return _Observed(h, monkeypatch)


async def test_a_transaction_twenty_batches_long_is_applied_in_parts(
    small: IndexerHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = small
    observed = await _seeded(h, monkeypatch)
    await h.execute("UPDATE vouchers SET metadata = '{\"wave\": 2}' WHERE id LIKE 'bulk_%'")
    await h.catch_up()

    assert sum(observed.applied) == ROWS
    assert max(observed.applied) <= 2 * BATCH  # never the whole transaction at once
    assert observed.partial.count(True) >= ROWS // BATCH - 1
    assert max(observed.chunks) <= 2 * BATCH
    for voucher_id in ("bulk_00001", f"bulk_{ROWS // 2:05d}", f"bulk_{ROWS:05d}"):
        doc = await h.es_doc("voucher", voucher_id)
        assert doc is not None and doc["doc"]["metadata"] == {"wave": 2}
        cached = await h.redis_doc("voucher", P, voucher_id)
        assert cached["metadata"] == {"wave": 2}
    report = await h.verify()
    assert report.ok, report.differences


async def test_a_renamed_campaign_reaches_its_vouchers_a_chunk_at_a_time(
    small: IndexerHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = small
    observed = await _seeded(h, monkeypatch)
    await h.execute("UPDATE campaigns SET name = 'Winter' WHERE id = 'camp_1'")
    await h.catch_up()

    assert observed.applied == [1] and observed.marked == [1]  # one change, one mark ...
    assert sum(observed.chunks) >= ROWS  # ... reaching every voucher ...
    assert max(observed.chunks) <= 2 * BATCH  # ... a chunk at a time
    for voucher_id in ("v_1", "bulk_00001", f"bulk_{ROWS:05d}"):
        assert (await h.redis_doc("voucher", P, voucher_id))["campaign"] == "Winter"
    report = await h.verify()
    assert report.ok, report.differences


async def test_a_truncate_is_resolved_a_chunk_at_a_time(
    small: IndexerHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = small
    observed = await _seeded(h, monkeypatch)
    await h.execute("TRUNCATE vouchers CASCADE")
    await h.catch_up()

    assert max(observed.chunks) <= 2 * BATCH and max(observed.marked) <= 2 * BATCH
    assert sum(observed.chunks) >= ROWS  # every indexed voucher removed
    await h.clients.search.refresh()
    assert await h.clients.search.count(ObjectKind.VOUCHER) == 0
    envelope = await h.clients.cache.store.get_object(P, "voucher", f"bulk_{ROWS:05d}")
    assert envelope is not None and envelope.is_tombstone
    report = await h.verify()
    assert report.ok, report.differences
