"""Dependency outages: Redis stopped during a read load, Elasticsearch unreachable.

The shared services are never stopped. Redis: a redis-server of this test's own on a free port
(append-only file in a temp dir, so a restart keeps the data), fed by an indexer of its own.
Elasticsearch: the app reaches it through a TCP proxy this test owns; closing the proxy
simulates an unreachable node, reopening it a recovered one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from cache.types import Lsn
from indexer.commands import open_clients
from indexer.runner import Indexer
from tests.fixtures.faults import free_port
from tests.fixtures.indexer import IndexerHarness
from tests.fixtures.readapi import (
    ApiHarness,
    assert_error,
    seed_tenants,
    settings_for,
    start_api,
)
from tests.fixtures.readapi import api_fixture as api_fixture  # the "api" fixture

pytestmark = pytest.mark.services

WAIT = 30.0


class RedisProcess:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + WAIT
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


class TcpProxy:
    """Forwards a local port to Elasticsearch while open."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                 reuse_address=True)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self.writers):
                writer.close()
            await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers.difference_update((writer, up_writer))


@pytest.fixture
async def es_proxy(harness: IndexerHarness) -> AsyncIterator[TcpProxy]:
    port = int(harness.settings.es_url.rsplit(":", 1)[1].strip("/"))
    proxy = TcpProxy(port)
    await proxy.open()
    try:
        yield proxy
    finally:
        await proxy.close()


async def catch_up(h: IndexerHarness, indexer: Indexer) -> Lsn:
    cursor = await h.db.execute("SELECT pg_current_wal_lsn()::text")
    row = await cursor.fetchone()
    assert row is not None
    target = Lsn.parse(row[0])
    for _ in range(10_000):
        await indexer.step()
        if indexer.watermark is not None and indexer.watermark >= target:
            return indexer.watermark
    raise AssertionError("the indexer did not catch up")


VOUCHERS = [(f"v_{i}", f"CODE-{i}") for i in range(5)]


async def seed_vouchers(h: IndexerHarness) -> None:
    values = ", ".join(f"('{vid}', 'proj_a', '{code}', 'GIFT_VOUCHER')" for vid, code in VOUCHERS)
    await h.execute(f"INSERT INTO vouchers (id, project_id, code, type) VALUES {values}")


async def read_load(api: ApiHarness, count: int, failures: list[str]) -> None:
    for n in range(count):
        vid, code = VOUCHERS[n % len(VOUCHERS)]
        response = await api.get(f"/v1/vouchers/{code}")
        if response.status != 200:
            failures.append(f"{code}: {response.status} {await response.text()}")
            continue
        body = await response.json()
        if body["id"] != vid or body["code"] != code:
            failures.append(f"{code}: wrong body {body}")


async def test_redis_stopped_during_a_read_load(
    harness: IndexerHarness, private_redis: RedisProcess
) -> None:
    settings = dataclasses.replace(harness.settings, redis_url=private_redis.url)
    async with open_clients(settings) as clients:
        indexer = Indexer(settings, clients.search, clients.cache)
        try:
            await seed_tenants(harness)
            await seed_vouchers(harness)
            lsn = await catch_up(harness, indexer)
            # Without Redis, codes resolve through a search, which sees refreshed documents
            # only (within the refresh interval): the test makes them searchable first.
            await clients.search.refresh()
        finally:
            await indexer.close()
    app, client = await start_api(harness, settings_for(harness, redis_url=private_redis.url))
    api = ApiHarness(harness, app, client)
    services = api.services
    try:
        await api.heard(lsn)
        failures: list[str] = []
        await read_load(api, 50, failures)  # warm: every layer filled
        private_redis.kill()
        async with asyncio.timeout(WAIT):
            await services.listener.disconnected_event.wait()
        assert not services.l1.enabled
        await read_load(api, 300, failures)
        await assert_error(await api.get("/readyz", key=None), 503, "unavailable")
        private_redis.start()
        async with asyncio.timeout(WAIT):
            await services.listener.connected_event.wait()
        await read_load(api, 100, failures)
        assert failures == []
        metrics = await (await api.get("/metrics", key=None)).text()
        assert 'readapi_stale_serves_total{what="api_key"}' in metrics
        assert "readapi_rate_limit_fallback_total" in metrics
        assert services.metrics.rate_limit_fallback._value.get() > 0
        assert (await api.get("/readyz", key=None)).status == 200
    finally:
        await client.close()


async def test_rate_limit_falls_back_locally_while_redis_is_down(
    harness: IndexerHarness, private_redis: RedisProcess
) -> None:
    settings = dataclasses.replace(harness.settings, redis_url=private_redis.url)
    async with open_clients(settings) as clients:
        indexer = Indexer(settings, clients.search, clients.cache)
        try:
            await seed_tenants(harness, limit_a=5)
            await seed_vouchers(harness)
            lsn = await catch_up(harness, indexer)
            # Without Redis, codes resolve through a search, which sees refreshed documents
            # only (within the refresh interval): the test makes them searchable first.
            await clients.search.refresh()
        finally:
            await indexer.close()
    app, client = await start_api(harness, settings_for(harness, redis_url=private_redis.url))
    api = ApiHarness(harness, app, client)
    try:
        await api.heard(lsn)
        assert (await api.get("/v1/vouchers/CODE-1")).status == 200  # key record seen
        private_redis.kill()
        async with asyncio.timeout(WAIT):
            await api.services.listener.disconnected_event.wait()
        statuses = [(await api.get("/v1/vouchers/CODE-1")).status for _ in range(7)]
        # The local bucket allows the key's limit per minute, then refuses.
        assert statuses[:5] == [200] * 5
        response = await api.get("/v1/vouchers/CODE-1")
        await assert_error(response, 429, "rate_limited")
        assert int(response.headers["Retry-After"]) >= 1
    finally:
        await client.close()


async def test_elasticsearch_unreachable(api: ApiHarness, es_proxy: TcpProxy) -> None:
    h = api.indexer
    await seed_vouchers(h)
    await h.execute(
        "INSERT INTO segments (id, project_id, name, type) VALUES ('s1', 'proj_a', 'S', 'static')"
    )
    await api.catch_up()
    settings = settings_for(h, es_url=f"http://127.0.0.1:{es_proxy.port}")
    app, client = await start_api(h, settings)
    cut = ApiHarness(h, app, client)
    try:
        assert (await cut.get("/v1/vouchers", headers={"X-Min-Watermark": "0/1"})).status == 200
        await es_proxy.close()  # from here on, nothing answers at the node's address
        failures: list[str] = []
        await read_load(cut, 100, failures)  # the indexer filled Redis: served from L2/L1
        assert failures == []
        for path in ("/v1/vouchers", "/v1/customers", "/v1/customers/x/vouchers",
                     "/v1/campaigns/not-in-redis"):
            response = await cut.get(path)
            await assert_error(response, 503, "unavailable")
            assert response.headers["X-Read-Watermark"]
        # A segment and its member count are Redis's: served without the index.
        segment = await cut.get("/v1/segments/s1")
        assert segment.status == 200 and (await segment.json())["count"] == 0
        await assert_error(await cut.get("/readyz", key=None), 503, "unavailable")
        await es_proxy.open()
        async with asyncio.timeout(WAIT):
            while True:  # the next probe after the pause finds the node again
                if (await cut.get("/v1/vouchers")).status == 200:
                    break
                await asyncio.sleep(0.1)
        assert (await cut.get("/v1/segments/s1")).status == 200
    finally:
        await client.close()
