"""Replaying an old batch changes nothing: delivery is at least once, so it must not matter.

A logical slot cannot be moved backwards, so the replay comes from a second slot created
before the writes: once the main indexer applied everything, a second indexer on that slot
applies the same changes again to the same sinks. Documents are rebuilt from the source with
the commit LSN as version, so every such write is either refused (older) or rewrites the very
same bytes (equal version, same source state).
"""

from __future__ import annotations

import dataclasses

import pytest

from indexer.pgoutput import Transaction
from indexer.runner import Indexer
from tests.fixtures.faults import (
    RandomWorkload,
    capture_sinks,
    fault_seed,
    state_differences,
)
from tests.fixtures.indexer import IndexerHarness

pytestmark = pytest.mark.services


async def _create_slot(harness: IndexerHarness, name: str) -> None:
    await harness.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))


async def _drop_slot(harness: IndexerHarness, name: str) -> None:
    await harness.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
        "WHERE slot_name = %s",
        (name,),
    )


async def test_replaying_old_changes_from_a_second_slot_changes_nothing(
    harness: IndexerHarness, redis_prefix: str
) -> None:
    workload = RandomWorkload(harness.settings.pg_dsn, fault_seed(10), pause=0)
    await workload.populate(projects=3, customers=20, vouchers=40, redemptions=30)
    await harness.catch_up()
    replay_slot = f"{harness.settings.slot_name}_replay"
    # Created before the series of writes: it will hand every one of them out again.
    await _create_slot(harness, replay_slot)
    try:
        for _ in range(4):
            await workload.run_transactions(100)
            await harness.catch_up()
        # And a truncate, which fans out to every indexed object.
        await harness.execute("TRUNCATE redemptions")
        await workload.run_transactions(50)
        main_watermark = await harness.catch_up()
        before = await capture_sinks(harness.clients, redis_prefix)
        assert before.elastic and before.redis, "nothing was indexed"

        replayer = Indexer(
            dataclasses.replace(harness.settings, slot_name=replay_slot),
            harness.clients.search,
            harness.clients.cache,
        )
        replayed = 0
        try:
            # step() only: prepare() would see a slot without complete indices and reload.
            while replayer.watermark is None or replayer.watermark < main_watermark:
                result = await replayer.step()
                replayed += result.changes
        finally:
            await replayer.close()
        assert replayed > 0, "the second slot handed out nothing"

        after = await capture_sinks(harness.clients, redis_prefix)
        differences = state_differences(before, after)
        assert not differences, f"{workload.summary()}\n" + "\n".join(differences[:30])
        report = await harness.verify()
        assert report.ok, report.differences
    finally:
        await _drop_slot(harness, replay_slot)


async def test_reapplying_peeked_transactions_changes_nothing(
    harness: IndexerHarness, redis_prefix: str
) -> None:
    workload = RandomWorkload(harness.settings.pg_dsn, fault_seed(11), pause=0)
    await workload.populate(projects=3, customers=20, vouchers=40, redemptions=30)
    batches: list[list[Transaction]] = []

    async def keep(transactions: list[Transaction]) -> None:
        if transactions:
            batches.append(transactions)

    harness.indexer.before_advance = keep
    for _ in range(5):
        await workload.run_transactions(60)
        await harness.catch_up()
    harness.indexer.before_advance = None
    assert len(batches) >= 5 and sum(len(b) for b in batches) > 100
    before = await capture_sinks(harness.clients, redis_prefix)

    # Each batch again in its order, then all at once, then newest first: the order and the
    # grouping of a replay must not matter either.
    for batch in batches:
        await harness.indexer.apply(batch)
    await harness.indexer.apply([t for batch in batches for t in batch])
    for batch in reversed(batches):
        await harness.indexer.apply(batch)

    after = await capture_sinks(harness.clients, redis_prefix)
    differences = state_differences(before, after)
    assert not differences, f"{workload.summary()}\n" + "\n".join(differences[:30])
    report = await harness.verify()
    assert report.ok, report.differences
