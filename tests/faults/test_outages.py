"""Outages: a service's process (Elasticsearch, Redis, or the source Postgres) is stopped for
30 s while the platform keeps writing, then started again; the indexer waits it out and both
sinks end equal to the source.

The stopped service is always an instance of our own (``private_stack``), started through
``stack/`` on its own ports in a temporary stack dir: the team's shared services stay up.
The indexer runs in this process (``Indexer.run``), so its log lines and its retry counter
can be read directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import psycopg
import pytest
from redis.asyncio import Redis

from indexer import metrics
from indexer.commands import Clients
from indexer.migrate import apply_migrations
from indexer.runner import Indexer
from tests.fixtures.faults import (
    FaultEnv,
    PrivateStack,
    RandomWorkload,
    check_converged,
    fault_seed,
    read_watermark,
    wait_for_watermark,
    write_position,
)

pytestmark = [
    pytest.mark.services,
    pytest.mark.slow,
    # ``stack/`` starts a service with Popen and drops the handle on purpose (the service
    # outlives the call, as it does for ``stack up``): Python warns when that handle goes.
    pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning"),
]

OUTAGE_SECONDS = 30.0
# A loop that waits out an outage with backoff (capped at 5 s, full jitter) makes a few
# dozen attempts in 30 s; one that spins makes thousands. The bound sits far from both.
MAX_RETRIES_PER_SECOND = 3.0
WAITING = "indexer waiting for a dependency"
RUNNING = "indexer running"


def retries_so_far() -> float:
    return sum(
        sample.value
        for metric in metrics.RETRIES.collect()
        for sample in metric.samples
        if sample.name == "indexer_retries_total"
    )


@dataclass
class Outage:
    seconds: float
    retries: float


@asynccontextmanager
async def running_indexer(env: FaultEnv, clients: Clients) -> AsyncIterator[Indexer]:
    indexer = Indexer(env.settings, clients.search, clients.cache)
    stop = asyncio.Event()
    task = asyncio.create_task(indexer.run(stop))
    try:
        # Up when the initial load is done and a first step has run.
        deadline = time.monotonic() + 120
        while indexer.watermark is None or await read_watermark(clients.cache.store) is None:
            assert not task.done(), task
            assert time.monotonic() < deadline, "indexer did not start"
            await asyncio.sleep(0.1)
        yield indexer
    finally:
        stop.set()
        await task


async def outage(
    stop_service: Callable[[], Awaitable[None]], start_service: Callable[[], Awaitable[None]]
) -> Outage:
    """Stop a service for OUTAGE_SECONDS and start it again; count the indexer's retries."""
    before = retries_so_far()
    await stop_service()
    started = time.monotonic()
    await asyncio.sleep(OUTAGE_SECONDS)
    seconds = time.monotonic() - started
    retries = retries_so_far() - before
    await start_service()
    return Outage(seconds, retries)


async def converge_after(
    env: FaultEnv,
    clients: Clients,
    workload: RandomWorkload,
    caplog: pytest.LogCaptureFixture,
    stopped: Outage,
) -> None:
    async with await psycopg.AsyncConnection.connect(env.settings.pg_dsn) as conn:
        target = await write_position(conn)
    await wait_for_watermark(clients.cache.store, target, within=240)
    problems = await check_converged(env.settings, clients)
    assert not problems, f"{workload.summary()}\n" + "\n".join(problems[:40])
    # It noticed, said so once (not once per attempt), and said when it was back.
    messages = [r.getMessage() for r in caplog.records if r.name == "indexer.runner"]
    assert WAITING in messages, messages[-20:]
    assert RUNNING in messages[messages.index(WAITING) :], messages[-20:]
    assert messages.count(WAITING) <= 3, messages.count(WAITING)
    # It kept trying, without spinning.
    assert stopped.retries >= 1
    assert stopped.retries < MAX_RETRIES_PER_SECOND * stopped.seconds, stopped


async def test_elasticsearch_outage_then_convergence(
    fault_env: FaultEnv, private_stack: PrivateStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="indexer")
    elasticsearch = private_stack.elasticsearch()
    await private_stack.start(elasticsearch)
    fault_env.with_services(es_url=private_stack.es_url)
    workload = RandomWorkload(fault_env.settings.pg_dsn, fault_seed(20), pause=0.01)
    await workload.populate()
    await workload.populate_quiet()
    try:
        async with fault_env.clients() as clients, running_indexer(fault_env, clients):
            async with workload.running():
                await asyncio.sleep(2)
                stopped = await outage(
                    lambda: private_stack.stop(elasticsearch),
                    lambda: private_stack.start(elasticsearch),
                )
                # Writes go on for a while after the service is back.
                await asyncio.sleep(3)
            await converge_after(fault_env, clients, workload, caplog, stopped)
    finally:
        # The whole node goes, with this test's indices.
        await private_stack.ensure_stopped(elasticsearch)


async def _redis_outage(
    fault_env: FaultEnv,
    private_stack: PrivateStack,
    caplog: pytest.LogCaptureFixture,
    *,
    keep_data: bool,
    seed: int,
) -> None:
    caplog.set_level(logging.INFO, logger="indexer")
    redis = private_stack.redis()
    await private_stack.start(redis)
    fault_env.with_services(redis_url=private_stack.redis_url)
    if keep_data:
        # The stack runs Redis without persistence. With a save point, the shutdown on
        # SIGTERM writes a dump that the restart loads: an outage without data loss.
        admin = Redis.from_url(private_stack.redis_url)
        try:
            await admin.config_set("save", "3600 1")
        finally:
            await admin.aclose()
    workload = RandomWorkload(fault_env.settings.pg_dsn, seed, pause=0.01)
    await workload.populate()
    # Written once by the initial load, never again: after a restart that lost the data,
    # only a reload brings these back.
    await workload.populate_quiet()
    try:
        async with fault_env.clients() as clients, running_indexer(fault_env, clients):
            async with workload.running():
                await asyncio.sleep(2)
                stopped = await outage(
                    lambda: private_stack.stop(redis), lambda: private_stack.start(redis)
                )
                await asyncio.sleep(3)
            await converge_after(fault_env, clients, workload, caplog, stopped)
    finally:
        await private_stack.ensure_stopped(redis)
        # Nothing of this test's data may be loaded by the next start.
        (redis.data_dir / "dump.rdb").unlink(missing_ok=True)


async def test_redis_outage_then_convergence(
    fault_env: FaultEnv, private_stack: PrivateStack, caplog: pytest.LogCaptureFixture
) -> None:
    await _redis_outage(fault_env, private_stack, caplog, keep_data=True, seed=fault_seed(21))


async def test_redis_restarted_empty_then_convergence(
    fault_env: FaultEnv, private_stack: PrivateStack, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis as the stack runs it keeps nothing over a restart: documents, aliases, API keys
    and the watermark are all gone, and only the indexer can bring the keys back."""
    await _redis_outage(fault_env, private_stack, caplog, keep_data=False, seed=fault_seed(22))


async def test_postgres_outage_then_convergence(
    fault_env: FaultEnv, private_stack: PrivateStack, caplog: pytest.LogCaptureFixture
) -> None:
    """The source itself goes away (a clean shutdown, as for a restart or a failover drill):
    the slot keeps its confirmed position over the restart and the indexer resumes from it.
    A cluster of our own, on its own port: the team's Postgres stays up."""
    caplog.set_level(logging.INFO, logger="indexer")
    postgres = private_stack.postgres()
    await private_stack.start(postgres)
    dsn = postgres.dsn()
    await asyncio.to_thread(apply_migrations, dsn)
    fault_env.with_services(pg_dsn=dsn)
    workload = RandomWorkload(dsn, fault_seed(23), pause=0.01)
    await workload.populate()
    await workload.populate_quiet()
    try:
        async with fault_env.clients() as clients, running_indexer(fault_env, clients):
            async with workload.running():
                await asyncio.sleep(2)
                stopped = await outage(
                    lambda: private_stack.stop(postgres), lambda: private_stack.start(postgres)
                )
                await asyncio.sleep(3)
            assert workload.disconnects >= 1, workload.summary()
            await converge_after(fault_env, clients, workload, caplog, stopped)
    finally:
        await private_stack.ensure_stopped(postgres)
