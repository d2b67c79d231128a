"""The platform on clusters: a three-node Elasticsearch (``stack.elasticsearch_cluster``), with
shards and replicas set per kind, and a Redis Cluster of three masters with a replica each
(``stack.redis_cluster``). While the platform writes and the read API answers, the elected
Elasticsearch master and the Redis master that serves the watermark and the invalidation
channel are killed with SIGKILL: no write is lost and no read fails.

The indexer and the read API get every Elasticsearch node's URL (``LOYALTY_ES_URL``,
comma-separated) and the Redis Cluster's URL (``redis+cluster://``); the indexer waits for a
replica of every Redis primary to hold a batch before its slot moves
(``LOYALTY_REDIS_MIN_REPLICAS=1``), so the promoted replica has every write the slot
confirmed. The reader asks for the objects of a project no transaction touches (the "quiet"
project), so the right answer is known: every lookup 200, every list's ``total`` the
project's count.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
from aiohttp import TCPConnector
from aiohttp.test_utils import TestClient, TestServer
from redis.crc import key_slot

from cache.readmodel.keys import KeyLayout
from readapi.app import create_app
from readapi.settings import ApiSettings
from stack.elasticsearch_cluster import ElasticsearchCluster
from stack.redis_cluster import RedisCluster
from tests.faults.test_outages import running_indexer
from tests.fixtures.faults import (
    FaultEnv,
    RandomWorkload,
    check_converged,
    fault_seed,
    free_port,
    private_stack_dir,
    wait_for_watermark,
    write_position,
)

pytestmark = [
    pytest.mark.services,
    pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning"),
]

NODES = 3
KEY = ("quiet_reader", "quiet-reader-token")
SHARDS = "2,voucher=3"
REPLICAS = "1"


@pytest.fixture(scope="module")
def es_cluster() -> Iterator[ElasticsearchCluster]:
    with private_stack_dir() as stack:
        cluster = ElasticsearchCluster(
            stack.config,
            lambda service, message: None,
            http_ports=[free_port() for _ in range(NODES)],
            transport_ports=[free_port() for _ in range(NODES)],
        )
        try:
            cluster.up()
            yield cluster
        finally:
            cluster.stop()


@dataclass
class Reads:
    statuses: Counter[int] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)


async def read_loop(
    client: TestClient, codes: list[str], customers: list[str], stop: asyncio.Event, reads: Reads
) -> None:
    headers = {"X-App-Id": KEY[0], "X-App-Token": KEY[1]}
    rng = random.Random(7)
    while not stop.is_set():
        choice = rng.randrange(4)
        if choice == 0:
            path, expected_total = f"/v1/vouchers/{rng.choice(codes)}", None
        elif choice == 1:
            path, expected_total = f"/v1/customers/{rng.choice(customers)}", None
        elif choice == 2:
            path, expected_total = "/v1/vouchers?limit=3", len(codes)
        else:
            path, expected_total = "/v1/customers?limit=3", len(customers)
        async with client.get(path, headers=headers) as response:
            reads.statuses[response.status] += 1
            body = await response.json()
            if response.status != 200:
                reads.wrong.append(f"{path}: {response.status} {body}")
            elif expected_total is not None and body.get("total") != expected_total:
                reads.wrong.append(f"{path}: total {body.get('total')} != {expected_total}")
        await asyncio.sleep(0.002)


async def test_nodes_killed_mid_run_lose_no_write_and_fail_no_read(
    fault_env: FaultEnv,
    es_cluster: ElasticsearchCluster,
    redis_cluster: RedisCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="readapi")
    urls = ",".join(es_cluster.urls)
    fault_env.with_services(es_url=urls, redis_url=redis_cluster.url)
    fault_env.settings = dataclasses.replace(
        fault_env.settings, es_shards=SHARDS, es_replicas=REPLICAS, redis_min_replicas=1
    )
    dsn = fault_env.settings.pg_dsn
    workload = RandomWorkload(dsn, fault_seed(50), pause=0.005)
    await workload.populate()
    quiet = await workload.populate_quiet()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO api_keys (id, project_id, token_sha256) VALUES (%s, %s, %s)",
            (KEY[0], quiet, hashlib.sha256(KEY[1].encode()).hexdigest()),
        )
        codes = [
            str(row[0])
            for row in await (
                await conn.execute("SELECT code FROM vouchers WHERE project_id = %s", (quiet,))
            ).fetchall()
        ]
        customers = [
            str(row[0])
            for row in await (
                await conn.execute("SELECT id FROM customers WHERE project_id = %s", (quiet,))
            ).fetchall()
        ]
    api_settings = ApiSettings(
        redis_url=redis_cluster.url,
        es_url=urls,
        es_index_prefix=fault_env.settings.es_index_prefix,
        redis_key_prefix=fault_env.settings.redis_key_prefix,
        cursor_secret="test-cursor-secret",
    )
    async with fault_env.clients() as clients, running_indexer(fault_env, clients):
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await wait_for_watermark(clients.cache.store, await write_position(conn), within=60)
        # Shards and replicas as configured, every copy assigned before the loss.
        prefix = fault_env.settings.es_index_prefix
        health = await clients.elastic.cluster.health(
            index=f"{prefix}*", wait_for_status="green", timeout="60s"
        )
        assert health["status"] == "green", health
        settings = await clients.elastic.indices.get_settings(index=f"{prefix}vouchers")
        (voucher_index,) = settings.body.values()
        assert voucher_index["settings"]["index"]["number_of_shards"] == "3"
        assert voucher_index["settings"]["index"]["number_of_replicas"] == "1"
        settings = await clients.elastic.indices.get_settings(index=f"{prefix}customers")
        (customer_index,) = settings.body.values()
        assert customer_index["settings"]["index"]["number_of_shards"] == "2"

        client = TestClient(TestServer(create_app(api_settings)), connector=TCPConnector())
        await client.start_server()
        reads, stop = Reads(), asyncio.Event()
        reader = asyncio.create_task(read_loop(client, codes, customers, stop, reads))
        try:
            async with workload.running():
                await asyncio.sleep(2)
                # The elected master: its loss also stops cluster-state updates until a new
                # one is elected, the hardest node to lose.
                master = (await clients.elastic.cat.master(format="json")).body[0]["node"]
                victim = next(node for node in es_cluster.nodes if node.node_name == master)
                await asyncio.to_thread(victim.kill)
                await asyncio.sleep(5)
                # The Redis master of the watermark and of the invalidation channel: the
                # listener loses its subscription and the indexer its watermark writes.
                layout = KeyLayout(fault_env.settings.redis_key_prefix)
                redis_victim = redis_cluster.slot_owner(key_slot(layout.watermark_key.encode()))
                assert redis_victim is not None
                await asyncio.to_thread(redis_victim.kill)
                await asyncio.to_thread(redis_cluster.wait_for_failover, redis_victim)
                await asyncio.sleep(3)
                # The promoted primary has no replica until the lost node comes back as its
                # replica: until then the indexer's replication fence holds every batch.
                await asyncio.to_thread(redis_victim.launch)
                await asyncio.to_thread(redis_cluster.up)
                await asyncio.sleep(3)
            stop.set()
            await reader
        finally:
            stop.set()
            await client.close()
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            target = await write_position(conn)
        await wait_for_watermark(clients.cache.store, target, within=180)
        problems = await check_converged(fault_env.settings, clients)
        await asyncio.to_thread(victim.launch)
    assert not problems, f"{workload.summary()}\n" + "\n".join(problems[:40])
    assert workload.commits > 50, workload.summary()
    assert sum(reads.statuses.values()) > 100, reads.statuses
    causes = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("readapi")
        and any(word in r.getMessage() for word in ("unavailable", "partial"))
    ]
    assert not reads.wrong, (reads.statuses, reads.wrong[:20], causes[:20])
    print("partial answers asked again:", causes)
