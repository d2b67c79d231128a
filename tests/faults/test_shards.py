"""Sharded indexers over one database (``indexer.shards``, ``indexer reshard``).

While random transactions run across many projects, one indexer hands over to two shards and
the two hand back to one, each time mid-stream. Afterwards every object of the source is
compared with both sinks (``indexer verify``: the API object's hash, field by field), every
write any indexer made is checked against the plans (the shard that wrote a project's
document at a version is the one that owned the project at that WAL position, and no other
wrote it), and the combined watermark is checked against each shard's position.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from cache.types import Lsn
from indexer.commands import drop_everything, gather_status, open_clients
from indexer.errors import ShardError
from indexer.reshard import reshard
from indexer.runner import Indexer
from indexer.settings import IndexerSettings
from indexer.shards import ShardPlan, ShardSpec, bucket, bucket_sql
from tests.fixtures.faults import (
    FaultEnv,
    RandomWorkload,
    check_converged,
    fault_seed,
    wait_for_watermark,
    write_position,
)

pytestmark = [pytest.mark.services]

PROJECTS = 10


@contextlib.asynccontextmanager
async def shard(
    settings: IndexerSettings, spec: str, *, may_fail: bool = False
) -> AsyncIterator[tuple[Indexer, asyncio.Task[None]]]:
    """An indexer of shard ``spec`` running in this process, with clients of its own; its
    failure is raised at the end of the block (``may_fail``: left in the task)."""
    shard_settings = dataclasses.replace(settings, shard=spec)
    async with open_clients(shard_settings) as clients:
        indexer = Indexer(shard_settings, clients.search, clients.cache)
        stop = asyncio.Event()
        task = asyncio.create_task(indexer.run(stop))
        try:
            yield indexer, task
        finally:
            stop.set()
            await asyncio.wait([task])
            if not may_fail:
                task.result()


async def until(condition: object, what: str, within: float = 120) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def owner(plans: list[ShardPlan], project_id: str, version: int) -> str:
    """The shard that owns ``project_id`` at WAL position ``version`` under ``plans``."""
    in_force = max((p for p in plans if p.handoff <= version), key=lambda p: p.handoff)
    return str(ShardSpec(bucket(project_id) % in_force.shards, in_force.shards))


async def test_one_to_two_shards_and_back_mid_stream_loses_and_duplicates_nothing(
    fault_env: FaultEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="indexer.runner")
    settings = fault_env.settings
    dsn = settings.pg_dsn
    workload = RandomWorkload(dsn, fault_seed(70), pause=0.003)
    await workload.populate(projects=PROJECTS, customers=20, vouchers=30, redemptions=20)
    writes_stop = asyncio.Event()
    writes = asyncio.create_task(workload.run(writes_stop))
    async with (
        fault_env.clients() as clients,
        shard(settings, "0/1") as (single, single_task),
    ):
        await until(lambda: single.watermark is not None, "the initial load")
        await asyncio.sleep(1.0)
        # 1 -> 2 while transactions commit.
        done = await reshard(dsn, settings, 2)
        assert any(line.startswith("plan ") for line in done), done
        async with (
            shard(settings, "0/2") as (first, first_task),
            shard(settings, "1/2") as (second, second_task),
        ):
            await until(lambda: single.retired, "shard 0/1 to hand off")
            await single_task
            await asyncio.sleep(2.0)
            # 2 -> 1 while transactions commit.
            await reshard(dsn, settings, 1)
            async with shard(settings, "0/1") as (back, back_task):
                await until(lambda: first.retired and second.retired, "shards of 2 to hand off")
                await first_task
                await second_task
                await asyncio.sleep(1.0)
                assert not writes.done(), "the random transactions stopped early"
                writes_stop.set()
                await writes
                # Every segment job the shards of two queued (they run none while handing
                # off) is run by the one shard in force now.
                await wait_for_watermark(clients.cache.store, await write_position_now(dsn))
                assert not back.retired and not back_task.done()
    # One more indexer of the plan in force, started after the last write.
    async with shard(settings, "0/1") as (last, _), fault_env.clients() as clients:
        target = await write_position_now(dsn)
        await until(lambda: last.watermark is not None and last.watermark >= target, "catch-up")
        await wait_for_watermark(clients.cache.store, target)
        problems = await check_converged(settings, clients)
        positions = await clients.cache.store.shard_watermarks()
    assert problems == [], "\n".join(problems[:20])

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        plans = sorted(await all_plans(conn), key=lambda p: p.handoff)
    assert [p.shards for p in plans] == [1, 2, 1]
    # The shards of two stopped at the second handoff, exactly.
    assert positions["2:0"] == positions["2:1"] == plans[2].handoff, positions
    writers: dict[tuple[str, int], set[str]] = defaultdict(set)
    for record in caplog.records:
        if record.getMessage() == "shard wrote":
            for project_id, version in record.writes:  # type: ignore[attr-defined]
                writers[(project_id, version)].add(record.shard)  # type: ignore[attr-defined]
    by_shard: dict[str, set[str]] = defaultdict(set)
    wrong = []
    for (project_id, version), shards in writers.items():
        expected = owner(plans, project_id, version)
        by_shard[expected].add(project_id)
        if shards != {expected}:
            wrong.append(f"{project_id}@{Lsn(version)}: by {sorted(shards)}, owner {expected}")
    assert wrong == [], "\n".join([str(plans), *wrong[:20]])
    # Both shards of two owned and wrote projects between the handoffs, none the same.
    assert by_shard["0/2"] and by_shard["1/2"], dict(by_shard)
    assert not by_shard["0/2"] & by_shard["1/2"]
    assert workload.commits > 50, workload.summary()


async def load_then_plan_two_shards(settings: IndexerSettings) -> None:
    """One indexer loads the indices, then hands off to a plan of two shards (not started)."""
    async with shard(settings, "0/1") as (single, _):
        await until(lambda: single.watermark is not None, "the initial load")
        await reshard(settings.pg_dsn, settings, 2)
        await until(lambda: single.retired, "shard 0/1 to hand off")


def project_of_shard(spec: ShardSpec) -> str:
    return next(f"proj_{n}" for n in range(1000) if spec.owns(f"proj_{n}"))


async def test_the_watermark_waits_for_the_shard_that_owns_the_write(
    fault_env: FaultEnv,
) -> None:
    """Read-your-writes across shards: the watermark readers wait on is the least position of
    the shards in force. A shard that is down holds it back, however far the other runs, so
    no reader is told a write is applied that is not."""
    settings = fault_env.settings
    dsn = settings.pg_dsn
    mine, theirs = project_of_shard(ShardSpec(0, 2)), project_of_shard(ShardSpec(1, 2))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for project in (mine, theirs):
            await conn.execute("INSERT INTO projects (id, name) VALUES (%s, %s)", (project, "p"))
    async with fault_env.clients() as clients:
        store = clients.cache.store
        await load_then_plan_two_shards(settings)
        async with shard(settings, "0/2") as (first, _):
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                for project in (mine, theirs):
                    await conn.execute(
                        "INSERT INTO customers (id, project_id, name) VALUES (%s, %s, 'x')",
                        (f"cust_{project}", project),
                    )
                written = await write_position(conn)
            await until(lambda: first.watermark is not None and first.watermark >= written, "0/2")
            positions = await store.shard_watermarks()
            assert positions["2:0"] >= written
            # Shard 1/2 never ran: it has no position, and the watermark stays where the
            # handoff left it.
            assert "2:1" not in positions
            watermark = await store.get_watermark()
            assert watermark is not None and watermark < written
            assert await store.get_object(mine, "customer", f"cust_{mine}") is not None
            assert await store.get_object(theirs, "customer", f"cust_{theirs}") is None
            # What an operator sees: the plan in force, this shard's role and slot, and the
            # position of each shard (none yet for 1/2).
            status = await gather_status(dataclasses.replace(settings, shard="0/2"))
            assert status["slot"] == f"{settings.slot_name}_0_of_2"
            assert status["shards"]["role"] == "active"
            assert status["shards"]["in_force"].startswith("2 from ")
            assert "handing_off" not in status["shards"]
            assert set(status["shard_positions"]) == {"1:0", "2:0"}
            async with shard(settings, "1/2") as (second, _):
                await wait_for_watermark(store, written, within=60)
                assert await store.get_object(theirs, "customer", f"cust_{theirs}") is not None
                assert second.watermark is not None and second.watermark >= written


async def test_a_shard_outside_the_plans_refuses_to_run(fault_env: FaultEnv) -> None:
    indexer_settings = dataclasses.replace(fault_env.settings, shard="1/3")
    async with shard(indexer_settings, "1/3", may_fail=True) as (indexer, task):
        await until(task.done, "the shard to stop")
    error = task.exception()
    assert isinstance(error, ShardError), error
    assert "in no shard plan in force (1 shard(s))" in str(error)
    assert indexer.watermark is None


async def write_position_now(dsn: str) -> Lsn:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return await write_position(conn)


async def all_plans(conn: psycopg.AsyncConnection[Any]) -> list[ShardPlan]:
    cursor = await conn.execute(
        "SELECT generation, shards, handoff_lsn::text FROM loyalty_indexer.shard_plans"
    )
    return [ShardPlan(int(r[0]), int(r[1]), Lsn.parse(str(r[2]))) for r in await cursor.fetchall()]


async def test_row_filters_bucket_projects_as_python_does(pg_dsn: str) -> None:
    ids = [f"proj_{n}" for n in range(200)] + ["ü-ñ", "", "x" * 300]
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cursor = await conn.execute(
            f"SELECT id, {bucket_sql('id')} FROM unnest(%s::text[]) AS t(id)", (ids,)
        )
        rows = await cursor.fetchall()
    assert {str(r[0]): int(r[1]) for r in rows} == {i: bucket(i) for i in ids}


async def test_reshard_refuses_what_would_leave_a_project_without_an_owner(
    fault_env: FaultEnv,
) -> None:
    settings = fault_env.settings
    dsn = settings.pg_dsn
    with pytest.raises(ShardError, match="of the plan in force does not exist"):
        await reshard(dsn, settings, 2)
    async with shard(settings, "0/1") as (single, _):
        await until(lambda: single.watermark is not None, "the initial load")
    assert (await reshard(dsn, settings, 1))[-1].startswith("already 1 shard(s)")
    await reshard(dsn, settings, 2)
    # Shard 0/1 has not handed off yet (it is not running): a second reshard would give its
    # projects a third owner before the second one starts.
    with pytest.raises(ShardError, match="still handing off"):
        await reshard(dsn, settings, 3)
    with pytest.raises(ShardError, match="--shards must be from 1 to 256"):
        await reshard(dsn, settings, 0)
    # `indexer drop` removes every shard's slot and publication and forgets the plans.
    dropped = await drop_everything(dataclasses.replace(settings, pg_admin_dsn=dsn))
    names = {f"{settings.slot_name}_{k}_of_2" for k in range(2)} | {settings.slot_name}
    assert names <= {item.removeprefix("slot ") for item in dropped}, dropped
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        assert await all_plans(conn) == []
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
        )
        assert await cursor.fetchone() == (0,)


async def test_an_object_moving_to_another_shards_project_leaves_its_old_one(
    fault_env: FaultEnv,
) -> None:
    """``UPDATE ... SET project_id`` across shards: the old project's shard gets a DELETE, the
    new one's an INSERT, at the same commit LSN. The old project's keys get tombstones (from
    its shard), the new project's get the object (from the other), and nothing else."""
    settings = fault_env.settings
    dsn = settings.pg_dsn
    mine, theirs = project_of_shard(ShardSpec(0, 2)), project_of_shard(ShardSpec(1, 2))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for project in (mine, theirs):
            await conn.execute("INSERT INTO projects (id, name) VALUES (%s, %s)", (project, "p"))
        await conn.execute(
            "INSERT INTO customers (id, project_id, source_id, name) VALUES "
            "('c1', %s, 'src-1', 'Ann'), ('c2', %s, 'src-2', 'Bob')",
            (mine, theirs),
        )
        await conn.execute(
            "INSERT INTO vouchers (id, project_id, code, type) VALUES "
            "('v1', %s, 'CODE-1', 'GIFT_VOUCHER'), ('v2', %s, 'CODE-2', 'GIFT_VOUCHER')",
            (mine, theirs),
        )
    async with fault_env.clients() as clients:
        store = clients.cache.store
        await load_then_plan_two_shards(settings)
        async with shard(settings, "0/2"), shard(settings, "1/2"):
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                async with conn.transaction():
                    for table, row in (("vouchers", "v1"), ("customers", "c1")):
                        await conn.execute(
                            f"UPDATE {table} SET project_id = %s WHERE id = %s", (theirs, row)
                        )
                moved = await write_position(conn)
            await wait_for_watermark(store, moved, within=60)
            old_voucher = await store.get_object(mine, "voucher", "v1")
            new_voucher = await store.get_object(theirs, "voucher", "v1")
            assert old_voucher is not None and old_voucher.is_tombstone
            assert new_voucher is not None and not new_voucher.is_tombstone
            old_customer = await store.get_object(mine, "customer", "c1")
            assert old_customer is not None and old_customer.is_tombstone
            problems = await check_converged(settings, clients)
    assert problems == [], "\n".join(problems[:20])


async def test_a_recompute_queued_by_a_shard_handing_off_runs_in_the_new_owner(
    fault_env: FaultEnv,
) -> None:
    """A shard handing off applies changes up to the handoff but runs no recompute: a segment
    filter edit it applies queues a job that the project's new owner must run, although that
    owner queued nothing itself."""
    settings = fault_env.settings
    dsn = settings.pg_dsn
    theirs = project_of_shard(ShardSpec(1, 2))
    gold = '{"metadata.tier": {"conditions": {"$is": "gold"}}}'
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("INSERT INTO projects (id, name) VALUES (%s, 'p')", (theirs,))
        await conn.execute(
            "INSERT INTO customers (id, project_id, metadata) VALUES "
            "('c1', %s, '{\"tier\": \"gold\"}'), ('c2', %s, '{\"tier\": \"silver\"}')",
            (theirs, theirs),
        )
        await conn.execute(
            "INSERT INTO segments (id, project_id, name, type, filter) "
            "VALUES ('seg', %s, 'S', 'auto-update', %s)",
            (theirs, gold),
        )
    async with fault_env.clients() as clients:
        store, membership = clients.cache.store, clients.cache.membership
        await load_then_plan_two_shards(settings)
        async with (
            shard(settings, "0/2"),
            shard(settings, "1/2"),
            await psycopg.AsyncConnection.connect(dsn) as conn,
        ):
            await wait_for_watermark(store, await write_position(conn), within=60)
        assert await membership.count(theirs, "seg") == 1
        # Shard 1/2 is down: the edit waits in its slot. One shard takes over after it.
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(
                "UPDATE segments SET filter = %s WHERE id = 'seg'",
                ('{"metadata.tier": {"conditions": {"$in": ["gold", "silver"]}}}',),
            )
        await reshard(dsn, settings, 1)
        async with shard(settings, "0/1") as (back, _):
            await until(lambda: back.watermark is not None, "shard 0/1 to start")
            await until(lambda: not back.recompute.pending, "shard 0/1 to find no job")
            async with shard(settings, "1/2") as (second, _):
                await until(lambda: second.retired, "shard 1/2 to hand off")
            # Not retired: 0/2 never ran again; its position stays at the last handoff.
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                written = await write_position(conn)
            async with shard(settings, "0/2") as (first, _):
                await until(lambda: first.retired, "shard 0/2 to hand off")
            await wait_for_watermark(store, written, within=60)
        assert await membership.count(theirs, "seg") == 2
