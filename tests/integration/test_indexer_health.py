"""Operator signals of ``indexer run`` against the real services: ``/healthz`` follows the
capture loop (starting, ok, stalled), the lag timer's gauges follow the slot while the loop is
blocked and after it catches up, and SIGTERM in the middle of an initial load ends the
process cleanly, the next start loading everything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from indexer.commands import Clients, open_clients
from indexer.daemon import probe
from indexer.health import serving
from indexer.lag import WAL_STATUSES, LagMonitor
from indexer.pgoutput import Transaction
from indexer.runner import Indexer
from indexer.seed import SeedPlan, seed_database
from indexer.settings import IndexerSettings
from tests.fixtures.faults import FaultEnv, check_converged, eventually
from tests.fixtures.indexer import IndexerHarness, harness_settings

pytestmark = [
    pytest.mark.services,
    pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning"),
]

# Liveness bounds only: a hung indexer fails the test instead of hanging it.
WITHIN = 60.0


def _gauge(name: str, labels: dict[str, str] | None = None) -> float | None:
    value: float | None = REGISTRY.get_sample_value(name, labels or {})
    return value


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


def _url(addresses: list[Any], path: str) -> str:
    host, port = addresses[0][:2]
    return f"http://{host}:{port}{path}"


@pytest.fixture
async def unprepared(
    pg_dsn: str,
    es_prefix: str,
    redis_prefix: str,
    unique_name: str,
    es_client: Any,
    redis_client: Any,
) -> AsyncIterator[tuple[IndexerSettings, Clients]]:
    """Settings and clients for an indexer that has not prepared anything yet."""
    settings = dataclasses.replace(
        harness_settings(pg_dsn, es_prefix, redis_prefix, unique_name), health_stall_seconds=1
    )
    async with open_clients(settings) as clients:
        yield settings, clients


class Gate:
    """A ``before_advance`` hook that holds every batch with transactions until opened."""

    def __init__(self, *, empty_batches_too: bool = False) -> None:
        self.opened = asyncio.Event()
        self.holding = asyncio.Event()
        self.empty_batches_too = empty_batches_too

    async def __call__(self, transactions: list[Transaction]) -> None:
        if transactions or self.empty_batches_too:
            self.holding.set()
            await self.opened.wait()


@dataclasses.dataclass
class Running:
    indexer: Indexer
    stop: asyncio.Event
    task: asyncio.Task[None]


async def _start(indexer: Indexer) -> Running:
    stop = asyncio.Event()
    return Running(indexer, stop, asyncio.create_task(indexer.run(stop)))


async def _finish(running: Running, gate: Gate | None = None) -> None:
    if gate is not None:
        gate.opened.set()
    running.stop.set()
    await asyncio.wait_for(running.task, timeout=WITHIN)


async def test_healthz_says_starting_then_ok_then_stalled_then_ok(
    unprepared: tuple[IndexerSettings, Clients],
) -> None:
    settings, clients = unprepared
    indexer = Indexer(settings, clients.search, clients.cache)
    async with (
        serving(lambda: probe(indexer, settings), "127.0.0.1", 0) as addresses,
        aiohttp.ClientSession() as http,
    ):
        healthz = _url(addresses, "/healthz")
        assert await _get(http, healthz) == (503, {"status": "starting"})

        def answers(status: int, state: str) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                got_status, body = await _get(http, healthz)
                return bool(got_status == status and body["status"] == state)

            return check

        running = await _start(indexer)
        gate = Gate(empty_batches_too=True)
        try:
            await eventually(answers(200, "ok"), within=WITHIN, what="/healthz ok")

            async def stepped() -> bool:
                got_status, body = await _get(http, healthz)
                age = body.get("last_step_age_seconds")
                return got_status == 200 and age is not None and age >= 0

            # Prepared, then a first step: until it, the age is null (and still "ok").
            await eventually(stepped, within=WITHIN, what="/healthz with a step's age")

            # A loop that can no longer finish a step (a write that never returns).
            indexer.before_advance = gate
            await eventually(answers(503, "stalled"), within=WITHIN, what="/healthz stalled")
            status, body = await _get(http, healthz)
            assert status == 503
            assert body["stall_seconds"] == 1 and body["last_step_age_seconds"] > 1

            indexer.before_advance = None
            gate.opened.set()
            await eventually(answers(200, "ok"), within=WITHIN, what="/healthz ok again")

            status, text = await _get(http, _url(addresses, "/metrics"))
            assert status == 200
            assert "indexer_last_step_timestamp_seconds" in text
            assert indexer.last_step_at is not None
            assert _gauge("indexer_last_step_timestamp_seconds") is not None
        finally:
            await _finish(running, gate)


async def test_lag_gauges_grow_while_the_loop_is_blocked_and_return_to_zero(
    harness: IndexerHarness,
) -> None:
    indexer = harness.indexer
    monitor = LagMonitor(harness.settings, lambda: indexer.applied_until)
    gate = Gate()
    indexer.before_advance = gate
    running = await _start(indexer)
    try:
        await harness.execute("INSERT INTO projects (id, name) VALUES ('proj_a', 'A')")
        await asyncio.wait_for(gate.holding.wait(), timeout=WITHIN)

        assert await monitor.sample() is not None
        first_bytes, first_seconds = _gauge("indexer_lag_bytes"), _gauge("indexer_lag_seconds")
        assert first_bytes is not None and first_bytes > 0
        assert first_seconds is not None and first_seconds > 0

        # More WAL behind the held batch, and more time since anything was applied.
        await harness.execute(
            "INSERT INTO customers (id, project_id, name) VALUES ('cust_1', 'proj_a', 'Ann')"
        )
        await asyncio.sleep(0.05)
        await monitor.sample()
        second_bytes, second_seconds = _gauge("indexer_lag_bytes"), _gauge("indexer_lag_seconds")
        assert second_bytes is not None and second_bytes > first_bytes
        assert second_seconds is not None and second_seconds > first_seconds

        gate.opened.set()

        async def caught_up() -> bool:
            await monitor.sample()
            return _gauge("indexer_lag_bytes") == 0 and _gauge("indexer_lag_seconds") == 0

        # The loop keeps stepping; a reading between two of its steps finds nothing behind.
        await eventually(caught_up, within=WITHIN, what="lag back to 0", every=0.05)
        assert await harness.redis_doc("customer", "proj_a", "cust_1") is not None
    finally:
        await monitor.close()
        await _finish(running, gate)


async def test_wal_status_and_retained_wal_follow_the_slot(harness: IndexerHarness) -> None:
    monitor = LagMonitor(harness.settings, lambda: harness.indexer.applied_until)
    try:
        status = await monitor.sample()
        assert status is not None and status.wal_status in WAL_STATUSES
        for name in WAL_STATUSES:
            expected = 1.0 if name == status.wal_status else 0.0
            assert _gauge("indexer_wal_status", {"status": name}) == expected
        assert _gauge("indexer_retained_wal_bytes") == status.retained_wal_bytes
        assert _gauge("indexer_lag_bytes") == status.lag_bytes

        # No slot (a load has not created it yet): nothing to report, no failure either.
        missing = LagMonitor(dataclasses.replace(harness.settings, slot_name="slot_nowhere"))
        try:
            assert await missing.sample() is None
            for name in WAL_STATUSES:
                assert _gauge("indexer_wal_status", {"status": name}) == 0
            assert _gauge("indexer_retained_wal_bytes") == 0
        finally:
            await missing.close()
    finally:
        await monitor.close()


def _free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port: int = probe_socket.getsockname()[1]
        return port


# Enough rows that, read at 50 a second, the load lasts far longer than the shutdown grace.
SEED = SeedPlan(
    seed=7,
    projects=2,
    customers=300,
    campaigns=6,
    vouchers=1_000,
    redemptions=200,
    segments=4,
    keys=1,
)


async def test_sigterm_during_the_initial_load_exits_0_and_the_next_start_loads(
    fault_env: FaultEnv,
) -> None:
    await asyncio.to_thread(seed_database, fault_env.settings.pg_dsn, SEED)
    port = _free_port()
    slow = fault_env.process(
        "slow", LOYALTY_LOAD_MAX_ROWS_PER_SECOND="50", LOYALTY_METRICS_PORT=str(port)
    )
    then = fault_env.process("then", LOYALTY_METRICS_PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        async with fault_env.clients() as clients, aiohttp.ClientSession() as http:

            async def get(path: str) -> tuple[int, Any] | None:
                try:
                    return await _get(http, base + path)
                except aiohttp.ClientConnectionError:
                    return None  # not listening yet

            async def loading() -> bool:
                assert slow.running, slow.log_tail()
                metrics = await get("/metrics")
                return metrics is not None and "\nindexer_loading 1.0\n" in metrics[1]

            slow.start()
            await eventually(loading, within=WITHIN, what="initial load running")
            assert await get("/healthz") == (503, {"status": "starting"})

            assert slow.terminate(timeout=WITHIN) == 0, slow.log_tail()
            log = slow.log_path.read_text()
            # Stopped between two chunks; the next start loads again into a new generation.
            assert "initial load stopped" in log or "initial load interrupted" in log, log
            assert "initial load complete" not in log, log
            meta = await clients.search.indices_ready()
            assert meta is None or meta.get("state") != "complete", meta

            then.start()

            async def healthy() -> bool:
                assert then.running, then.log_tail()
                answer = await get("/healthz")
                return answer is not None and answer[0] == 200

            await eventually(healthy, within=WITHIN * 2, what="second start loaded and ok")
            meta = await clients.search.indices_ready()
            assert meta is not None and meta.get("state") == "complete", meta
            problems = await check_converged(fault_env.settings, clients)
            assert not problems, "\n".join(problems[:40])
            assert then.terminate(timeout=WITHIN) == 0, then.log_tail()
    finally:
        slow.close()
        then.close()
