"""Rebuild reads from a streaming standby (``LOYALTY_PG_STANDBY_DSN``, ``indexer.standby``).

A primary and its standby of our own (``private_stack``: ``stack up postgres`` and ``stack up
postgres-standby`` on their own ports), each test in a database of its own on them. Random
transactions over every table, then: which of the indexer's rebuild statements ran where
(``pg_stat_statements`` on each server, told apart by the name every named query carries in
a leading comment), and both sinks compared with the source object by object.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from indexer import metrics
from indexer.migrate import apply_migrations
from indexer.source import REBUILD_QUERIES
from tests.faults.test_outages import running_indexer
from tests.fixtures.databases import drop_database
from tests.fixtures.faults import (
    FaultEnv,
    PrivateStack,
    RandomWorkload,
    check_converged,
    fault_seed,
    wait_for_watermark,
    write_position,
)

pytestmark = [
    pytest.mark.services,
    pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning"),
]

FALLBACK_LINE = "rebuild reads fall back to the primary"


@dataclass
class Pair:
    """This test's database on the private primary and on its standby (admin DSNs)."""

    primary_dsn: str
    standby_dsn: str


@pytest.fixture(scope="module")
def servers(private_stack: PrivateStack) -> Iterator[PrivateStack]:
    primary, standby = private_stack.postgres(), private_stack.postgres_standby()
    primary.up()
    standby.up()
    try:
        yield private_stack
    finally:
        standby.stop()
        primary.stop()


@pytest.fixture
async def pair(servers: PrivateStack) -> AsyncIterator[Pair]:
    primary, standby = servers.postgres(), servers.postgres_standby()
    name = f"standby_{uuid.uuid4().hex[:10]}"
    async with await psycopg.AsyncConnection.connect(
        primary.dsn("postgres"), autocommit=True
    ) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    await asyncio.to_thread(apply_migrations, primary.dsn(name))
    async with await psycopg.AsyncConnection.connect(primary.dsn(name), autocommit=True) as conn:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    try:
        yield Pair(primary.dsn(name), standby.dsn(name))
    finally:
        await asyncio.to_thread(drop_database, primary.dsn("postgres"), name)


def _use(env: FaultEnv, pair: Pair, **settings: object) -> None:
    env.with_services(pg_dsn=pair.primary_dsn)
    env.settings = dataclasses.replace(env.settings, pg_standby_dsn=pair.standby_dsn, **settings)


async def rebuild_statements(dsn: str) -> dict[str, int]:
    """Calls of each rebuild query in this database on the server of ``dsn``."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT s.query, s.calls FROM pg_stat_statements s"
            " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database()"
        )
        rows = await cursor.fetchall()
    calls = dict.fromkeys(REBUILD_QUERIES, 0)
    for text, count in rows:
        for name in REBUILD_QUERIES:
            if str(text).startswith(f"/* {name} */"):
                calls[name] += int(count)
    return calls


async def reset_statements(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database"
            " WHERE datname = current_database()), 0)"
        )


def counted(metric: object, label: str) -> float:
    total = 0.0
    for family in metric.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            if sample.name.endswith("_total") and label in sample.labels.values():
                total += sample.value
    return total


async def converge(env: FaultEnv, clients: object, workload: RandomWorkload) -> None:
    async with await psycopg.AsyncConnection.connect(env.settings.pg_dsn) as conn:
        target = await write_position(conn)
    await wait_for_watermark(clients.cache.store, target, within=120)  # type: ignore[attr-defined]
    problems = await check_converged(env.settings, clients)  # type: ignore[arg-type]
    assert not problems, f"{workload.summary()}\n" + "\n".join(problems[:40])


async def test_a_burst_is_rebuilt_from_the_standby_with_no_rebuild_read_on_the_primary(
    fault_env: FaultEnv, pair: Pair
) -> None:
    _use(fault_env, pair)
    workload = RandomWorkload(pair.primary_dsn, fault_seed(40), pause=0)
    await workload.populate()
    await workload.populate_quiet()
    from_standby = counted(metrics.REBUILD_READS, "standby")
    async with fault_env.clients() as clients, running_indexer(fault_env, clients):
        # The initial load reads the primary, in the snapshot its slot exported: counted
        # from here on, the burst alone.
        await reset_statements(pair.primary_dsn)
        await workload.run_transactions(400)
        async with await psycopg.AsyncConnection.connect(pair.primary_dsn) as conn:
            target = await write_position(conn)
        await wait_for_watermark(clients.cache.store, target, within=120)
        on_primary = await rebuild_statements(pair.primary_dsn)
        on_standby = await rebuild_statements(pair.standby_dsn)
        problems = await check_converged(fault_env.settings, clients)
    assert not problems, f"{workload.summary()}\n" + "\n".join(problems[:40])
    assert workload.commits >= 300, workload.summary()
    assert sum(on_primary.values()) == 0, on_primary
    assert on_standby["vouchers_by_ids"] > 0 and on_standby["customers_by_ids"] > 0, on_standby
    assert counted(metrics.REBUILD_READS, "standby") > from_standby


async def test_a_lagging_then_stopped_standby_hands_the_reads_to_the_primary(
    fault_env: FaultEnv,
    pair: Pair,
    servers: PrivateStack,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="indexer")
    _use(fault_env, pair, pg_standby_max_wait_ms=50)
    workload = RandomWorkload(pair.primary_dsn, fault_seed(41), pause=0)
    await workload.populate()
    standby = servers.postgres_standby()
    lagging = counted(metrics.STANDBY_FALLBACKS, "lagging")
    unavailable = counted(metrics.STANDBY_FALLBACKS, "unavailable")
    async with fault_env.clients() as clients, running_indexer(fault_env, clients):
        # Replay paused: the standby falls behind every batch from now on.
        async with await psycopg.AsyncConnection.connect(
            pair.standby_dsn, autocommit=True
        ) as conn:
            await conn.execute("SELECT pg_wal_replay_pause()")
            try:
                await reset_statements(pair.primary_dsn)
                await workload.run_transactions(60)
                await converge(fault_env, clients, workload)
                assert counted(metrics.STANDBY_FALLBACKS, "lagging") > lagging
                assert sum((await rebuild_statements(pair.primary_dsn)).values()) > 0
            finally:
                await conn.execute("SELECT pg_wal_replay_resume()")
        # Replay resumed: the standby serves again.
        from_standby = counted(metrics.REBUILD_READS, "standby")
        await workload.run_transactions(60)
        await converge(fault_env, clients, workload)
        assert counted(metrics.REBUILD_READS, "standby") > from_standby
        # The standby stopped: the primary serves, and nothing waits for the standby.
        await asyncio.to_thread(standby.stop)
        try:
            await workload.run_transactions(60)
            await converge(fault_env, clients, workload)
            assert counted(metrics.STANDBY_FALLBACKS, "unavailable") > unavailable
        finally:
            await asyncio.to_thread(standby.up)
    reasons = [
        getattr(record, "reason", None)
        for record in caplog.records
        if record.getMessage() == FALLBACK_LINE
    ]
    # Said once per change of state, not once per batch.
    assert "lagging" in reasons and "unavailable" in reasons, reasons
    assert len(reasons) <= 4, reasons
