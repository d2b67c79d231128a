"""Crash tests: ``indexer run`` is killed with SIGKILL again and again under a random write
load, restarted each time, and must end with both sinks equal to the source, field by field.

SIGKILL leaves no chance to finish a batch: the sinks may hold part of one, the slot has not
moved, the watermark lags. Delivery is therefore at least once, and every write must be
idempotent and versioned for the end state to be right whatever moment the kill hit.
"""

from __future__ import annotations

import asyncio
import random

import psycopg
import pytest

from cache.types import Lsn, ObjectKind
from tests.fixtures.faults import (
    FaultEnv,
    RandomWorkload,
    check_converged,
    eventually,
    fault_seed,
    read_watermark,
    wait_for_watermark,
    write_position,
)

pytestmark = [pytest.mark.services, pytest.mark.slow]

KILLS = 15


async def test_random_sigkills_under_write_load_converge(fault_env: FaultEnv) -> None:
    seed = fault_seed()
    rng = random.Random(seed)
    workload = RandomWorkload(fault_env.settings.pg_dsn, seed, pause=0.005)
    await workload.populate()
    await workload.populate_quiet()
    # Small batches: a restart finds a backlog and works through it in several batches, so
    # kills also land between the batches of one backlog.
    indexer = fault_env.process(LOYALTY_BATCH_CHANGES="300")
    seen_watermarks: set[Lsn | None] = set()
    try:
        async with fault_env.clients() as clients:
            store = clients.cache.store
            async with workload.running():
                # The initial load is let finish first: killed again and again, it would start
                # over each time on a slow machine and no kill would hit a streaming indexer
                # (test_sigkill_during_initial_load_then_restart_converges kills loads).
                indexer.start()

                async def loaded() -> bool:
                    return await read_watermark(store) is not None

                await eventually(loaded, within=180, what="the initial load")
                for _ in range(KILLS):
                    # Anywhere from well into streaming to the restart's start-up (imports,
                    # connecting, the backlog).
                    await asyncio.sleep(rng.uniform(0.3, 4.0))
                    indexer.kill()
                    seen_watermarks.add(await read_watermark(store))
                    indexer.start()
            # The workload has stopped: everything committed is at or before this position.
            async with await psycopg.AsyncConnection.connect(fault_env.settings.pg_dsn) as conn:
                target = await write_position(conn)
            await wait_for_watermark(
                store, target, alive=lambda: indexer.running, describe=indexer.log_tail
            )
            problems = await check_converged(fault_env.settings, clients)
            assert not problems, f"{workload.summary()}\n" + "\n".join(problems[:40])
            # A clean stop still works after all that.
            assert indexer.terminate() == 0, indexer.log_tail()
    finally:
        indexer.close()
    assert indexer.kills == KILLS
    # The kills hit a working indexer, not only its start-up: it moved forward in between.
    seen_watermarks.discard(None)
    assert len(seen_watermarks) >= 3, (seen_watermarks, indexer.log_tail())
    # Every table, and every kind of change the contract names, was exercised.
    for op in (
        "project_delete", "api_key_update", "customer_delete", "campaign_update",
        "voucher_code", "voucher_holder", "voucher_campaign", "redemption_insert",
        "redemption_delete", "segment_filter", "member_insert", "member_delete",
    ):
        assert workload.ops[op] > 0, workload.summary()


async def test_sigkill_during_initial_load_then_restart_converges(fault_env: FaultEnv) -> None:
    """Killed half way through the initial load; the restart loads again from a new snapshot.

    What changed in between (a deleted campaign, voucher and customer, a voucher code that
    moved) reaches neither load nor the stream: the second load must not leave the first
    one's copies of them live in Redis.
    """
    seed = fault_seed(1)
    workload = RandomWorkload(fault_env.settings.pg_dsn, seed, pause=0.02)
    # Big enough that the load takes a while after the first table (campaigns) is in.
    await workload.populate(projects=4, customers=400, vouchers=900, redemptions=300)
    campaign_id, project_id = workload.pools.campaigns[0]
    indexer = fault_env.process()
    try:
        async with fault_env.clients() as clients:
            store = clients.cache.store
            campaign_key = store.layout.object_key(project_id, ObjectKind.CAMPAIGN, campaign_id)

            async def first_table_loaded() -> bool:
                return bool(await store.redis.exists(campaign_key))

            async def load_complete() -> bool:
                meta = await clients.search.indices_ready()
                return meta is not None and meta.get("state") == "complete"

            # No other writes yet: the kill point is known (the first table is in, the rest
            # is loading) and so is what changes before the restart.
            indexer.start()
            # Polled often: the kill must land before the rest of the load is done.
            await eventually(
                first_table_loaded, within=120, what="campaigns loaded", every=0.01
            )
            indexer.kill()
            meta = await clients.search.indices_ready()
            assert meta is not None and meta.get("state") == "loading", meta
            async with await psycopg.AsyncConnection.connect(
                fault_env.settings.pg_dsn, autocommit=True
            ) as conn:
                await conn.execute("DELETE FROM campaigns WHERE id = %s", (campaign_id,))
                await conn.execute(
                    "DELETE FROM vouchers WHERE id = %s", (workload.pools.vouchers[0][0],)
                )
                await conn.execute(
                    "DELETE FROM customers WHERE id = %s", (workload.pools.customers[0][0],)
                )
                await conn.execute(
                    "UPDATE vouchers SET code = code || '-moved' WHERE id = %s",
                    (workload.pools.vouchers[1][0],),
                )
            async with workload.running():
                indexer.start()
                await eventually(load_complete, within=120, what="second initial load complete")
                # Then some streaming under load before the workload stops.
                await asyncio.sleep(2)
            async with await psycopg.AsyncConnection.connect(fault_env.settings.pg_dsn) as conn:
                target = await write_position(conn)
            await wait_for_watermark(
                store, target, alive=lambda: indexer.running, describe=indexer.log_tail
            )
            problems = await check_converged(fault_env.settings, clients)
            assert not problems, f"{workload.summary()}\n" + "\n".join(problems[:40])
            assert indexer.terminate() == 0, indexer.log_tail()
    finally:
        indexer.close()

