"""Heartbeat: while the watched tables are idle and another table of the same database takes
writes, the slot keeps moving, so the WAL it retains stays bounded.

Without it, a slot whose publication sees nothing never gets confirmed past its last change,
and Postgres keeps every WAL segment written since then, whoever wrote it, until the disk
fills up.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from cache.types import Lsn
from indexer.slot import SlotStatus, slot_status
from tests.fixtures.faults import write_position
from tests.fixtures.indexer import IndexerHarness

pytestmark = pytest.mark.services

ROWS_PER_ROUND = 500
PAYLOAD = 384
# Between rounds; only keeps the volume of WAL this test writes small.
ROUND_PAUSE = 0.2
# Liveness bound only. The restart position moves when the decoder meets a running-xacts
# record, which Postgres writes at checkpoints and every 15 s of WAL activity.
RESTART_MOVE_TIMEOUT = 120.0


async def _status(harness: IndexerHarness) -> SlotStatus:
    return await slot_status(harness.db, harness.settings.slot_name)


async def test_idle_watched_tables_do_not_pin_wal(harness: IndexerHarness) -> None:
    await harness.execute(
        "CREATE TABLE audit_events (id bigserial PRIMARY KEY, payload text NOT NULL)"
    )
    # A watched change first, so the slot has something behind it.
    await harness.execute("INSERT INTO projects (id, name) VALUES ('p1', 'One')")
    await harness.catch_up()
    start = await _status(harness)
    assert start.restart_lsn is not None
    written_from = await write_position(harness.db)

    stop = asyncio.Event()
    loop = asyncio.create_task(harness.indexer.run(stop))
    confirmed: list[Lsn] = []
    retained: list[int] = []
    try:
        deadline = time.monotonic() + RESTART_MOVE_TIMEOUT
        while True:
            await harness.execute(
                "INSERT INTO audit_events (payload) "
                "SELECT repeat(md5(g::text), %s) FROM generate_series(1, %s) g",
                (PAYLOAD // 32, ROWS_PER_ROUND),
            )
            round_end = await write_position(harness.db)

            async def caught_up(target: Lsn = round_end) -> bool:
                status = await _status(harness)
                return status.confirmed_flush_lsn >= target

            # The heartbeat confirms past this round's unwatched writes.
            for _ in range(600):
                if await caught_up():
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"slot not confirmed past {round_end}")
            status = await _status(harness)
            confirmed.append(status.confirmed_flush_lsn)
            retained.append(status.retained_wal_bytes)
            assert status.restart_lsn is not None
            if len(confirmed) >= 5 and status.restart_lsn > written_from:
                break
            await asyncio.sleep(ROUND_PAUSE)
            assert time.monotonic() < deadline, (
                f"restart_lsn stayed at {status.restart_lsn} (from {start.restart_lsn}) "
                f"while {status.wal_lsn - written_from} bytes were written"
            )
    finally:
        stop.set()
        await loop
    written = int(confirmed[-1]) - int(written_from)
    # Moving forward round after round ...
    assert confirmed == sorted(confirmed) and len(set(confirmed)) == len(confirmed)
    # ... with nothing the indexer had to apply ...
    assert harness.indexer.watermark is not None and harness.indexer.watermark >= confirmed[-1]
    # ... and the WAL kept for the slot no longer reaches back to where the writes began:
    # it is bounded by the distance between checkpoints, not by the volume written.
    assert retained[-1] < written, (retained, written)
    report = await harness.verify()
    assert report.ok, report.differences
