"""One chunk's writes stay in flight while the next chunk is read from the source and built;
a write that fails meanwhile fails the batch, which is applied again from the slot."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cache.errors import StoreUnavailable
from cache.types import ObjectKind
from indexer.rebuild import SinkWrites
from indexer.settings import IndexerSettings
from indexer.source import DocumentSource, Row
from tests.fixtures.indexer import IndexerHarness, prepared_harness
from tests.integration.test_indexer_changes import seed_base

pytestmark = pytest.mark.services

CHUNK = 25
ROWS = 4 * CHUNK
# Long enough for the next chunk's read to begin while a write waits for it; a write that
# keeps the next read from starting (no overlap) waits this long for nothing.
READ_WAIT_SECONDS = 3.0


@pytest.fixture
async def chunked(base_settings: IndexerSettings) -> AsyncIterator[IndexerHarness]:
    """Batches of a whole ``ROWS`` transaction, rebuilt in chunks of ``CHUNK`` objects."""
    settings = dataclasses.replace(
        base_settings, batch_changes=10 * ROWS, rebuild_chunk_ids=CHUNK
    )
    async with prepared_harness(settings) as prepared:
        await seed_base(prepared)
        await prepared.execute(
            "INSERT INTO vouchers (id, project_id, code, campaign_id, type) "
            "SELECT 'ov_' || lpad(g::text, 4, '0'), 'proj_a', 'OV-' || g, 'camp_1', "
            "'DISCOUNT_VOUCHER' FROM generate_series(1, %s::int) g",
            (ROWS,),
        )
        await prepared.catch_up()
        yield prepared


async def _update_all(h: IndexerHarness, wave: int) -> None:
    await h.execute(
        "UPDATE vouchers SET metadata = jsonb_build_object('wave', %s::int) "
        "WHERE id LIKE 'ov_%%'",
        (wave,),
    )


async def _all_at_wave(h: IndexerHarness, wave: int) -> None:
    """Every voucher reached both sinks at ``wave``, and verify finds nothing to repair."""
    for number in (1, ROWS // 2, ROWS):
        cached = await h.redis_doc("voucher", "proj_a", f"ov_{number:04d}")
        assert cached["metadata"] == {"wave": wave}
    doc = await h.es_doc("voucher", f"ov_{ROWS:04d}")
    assert doc is not None and doc["doc"]["metadata"] == {"wave": wave}
    report = await h.verify()
    assert report.ok, report.differences


class _HeldWrites:
    """The indexer's chunk writes, each held until ``release`` is called (at most
    ``READ_WAIT_SECONDS``), so that work running beside a write is seen whatever the
    machine's speed: ``started`` writes so far, ``in_flight`` now."""

    def __init__(self, h: IndexerHarness) -> None:
        self.started = 0
        self.in_flight = 0
        self._released = asyncio.Event()
        write_both = h.indexer._write_both

        async def held(conn: Any, chunk: SinkWrites) -> None:
            self.started += 1
            self.in_flight += 1
            self._released.clear()
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._released.wait(), READ_WAIT_SECONDS)
                await write_both(conn, chunk)
            finally:
                self.in_flight -= 1

        h.indexer._write_both = held  # type: ignore[method-assign]

    def release(self) -> None:
        self._released.set()


async def test_the_next_chunk_is_read_while_a_chunk_is_written(
    chunked: IndexerHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = chunked
    # For each read of vouchers from the source: whether a write was in flight meanwhile.
    overlapped: list[bool] = []
    rows_by_ids = DocumentSource.rows_by_ids

    async def watching_read(source: DocumentSource, kind: ObjectKind, ids: Any) -> list[Row]:
        started = writes.started
        rows = await rows_by_ids(source, kind, ids)
        if kind is ObjectKind.VOUCHER:
            overlapped.append(writes.in_flight > 0 or writes.started > started)
            writes.release()
        return rows

    writes = _HeldWrites(h)
    monkeypatch.setattr(DocumentSource, "rows_by_ids", watching_read)
    await _update_all(h, 2)
    await h.catch_up()

    assert len(overlapped) == ROWS // CHUNK
    # The first chunk is read before any write; every later one beside the previous write.
    assert overlapped[1:] == [True] * (ROWS // CHUNK - 1), overlapped
    await _all_at_wave(h, 2)


async def test_a_write_failing_in_flight_fails_the_batch_which_is_applied_again(
    chunked: IndexerHarness,
) -> None:
    h = chunked
    before = h.indexer.watermark
    apply = h.clients.cache.apply
    calls = 0

    async def failing_first(chunk: SinkWrites) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.2)  # the next chunk is being built meanwhile
            raise StoreUnavailable("redis: connection lost (test)")
        await apply(chunk)

    h.clients.cache.apply = failing_first  # type: ignore[method-assign]
    await _update_all(h, 3)
    with pytest.raises(StoreUnavailable):
        await h.indexer.step()
    assert h.indexer.watermark == before  # the slot did not move past the batch

    await h.catch_up()
    await _all_at_wave(h, 3)


async def test_the_next_group_is_read_and_checked_while_the_last_chunk_is_written(
    chunked: IndexerHarness,
) -> None:
    h = chunked
    # Groups of one chunk each: only the step's next group can run beside a write.
    h.indexer._settings = dataclasses.replace(
        h.settings, batch_changes=CHUNK, rebuild_chunk_ids=10 * ROWS
    )
    overlapped: list[bool] = []
    rebuild_connection = h.indexer._rebuild_connection

    async def watching_check(primary: Any, transactions: Any) -> Any:
        # Called once per group, before its rows are read.
        overlapped.append(writes.in_flight > 0)
        writes.release()
        return await rebuild_connection(primary, transactions)

    writes = _HeldWrites(h)
    h.indexer._rebuild_connection = watching_check  # type: ignore[method-assign]
    await _update_all(h, 4)
    await h.catch_up()

    assert len(overlapped) >= ROWS // CHUNK
    assert overlapped[0] is False and all(overlapped[1 : ROWS // CHUNK]), overlapped
    await _all_at_wave(h, 4)
