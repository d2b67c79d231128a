"""The replication fence (``cache/replicas.py``): the indexer moves its slot only once a
replica of every Redis primary holds the batch's writes, so a failover loses none of them.

A replica stopped with SIGSTOP stays connected but acknowledges nothing, so the fence must
fail while it is stopped and pass again once it runs. (Why the fence writes a key of its own
before ``WAIT``: the documented ``WAIT`` counts the calling connection's writes only. The
Redis 7.0 of the local stack also counts a connection's reads, so no test here tells the
two apart; the write keeps the fence right on servers that follow the documentation.) The
replica is stopped for less than the cluster's node timeout, so no failover starts.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import RedisCluster as RedisClusterClient

from cache.connect import RedisClient, redis_from_url
from cache.errors import CacheUnavailable
from cache.readmodel.keys import KeyLayout
from cache.records import Envelope, VersionedWrite
from cache.replicas import ReplicaFence
from cache.store import CacheStore
from cache.types import ObjectKind
from stack.redis_cluster import RedisCluster

pytestmark = pytest.mark.services

SHORT_MS = 200  # well under the cluster's node timeout: a stopped replica is not failed over


@pytest.fixture
async def cluster_client(redis_cluster: RedisCluster) -> AsyncIterator[RedisClient]:
    client = redis_from_url(redis_cluster.url)
    try:
        yield client
    finally:
        await client.aclose()


async def write_everywhere(client: RedisClient, layout: KeyLayout, version: int) -> None:
    """Writes to many projects, so that every primary gets some."""
    store = CacheStore(client, layout)
    await store.apply_writes([
        VersionedWrite(layout.object_key(f"p{i}", ObjectKind.VOUCHER, "v"), Envelope(version, 1, i))
        for i in range(30)
    ])


async def test_the_fence_waits_for_a_replica_of_every_primary(
    redis_cluster: RedisCluster, cluster_client: RedisClient, redis_prefix: str
) -> None:
    layout = KeyLayout(redis_prefix)
    await write_everywhere(cluster_client, layout, 1)
    await ReplicaFence(cluster_client, layout, replicas=1, timeout_ms=5000).wait()
    assert isinstance(cluster_client, RedisClusterClient)
    # One fence key per primary, each in a slot that primary serves.
    fences = [key async for key in cluster_client.scan_iter(match=f"{redis_prefix}rf:*")]
    assert len(fences) == len(redis_cluster.masters()) == 3

    # Each primary has one replica: two cannot acknowledge.
    with pytest.raises(CacheUnavailable, match="1 of 2 Redis replicas"):
        await ReplicaFence(cluster_client, layout, replicas=2, timeout_ms=SHORT_MS).wait()

    replica = redis_cluster.replica_nodes()[0]
    pid = replica.running_pid()
    assert pid is not None
    await write_everywhere(cluster_client, layout, 2)
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(CacheUnavailable, match="0 of 1 Redis replicas"):
            await ReplicaFence(cluster_client, layout, replicas=1, timeout_ms=SHORT_MS).wait()
    finally:
        os.kill(pid, signal.SIGCONT)
    await ReplicaFence(cluster_client, layout, replicas=1, timeout_ms=5000).wait()


async def test_one_server_without_replicas_fails_the_fence_and_zero_sends_nothing(
    redis_client: RedisClient, redis_prefix: str
) -> None:
    layout = KeyLayout(redis_prefix)
    await ReplicaFence(redis_client, layout, replicas=0, timeout_ms=SHORT_MS).wait()
    assert not await redis_client.exists(layout.fence_key())
    with pytest.raises(CacheUnavailable, match="0 of 1 Redis replicas"):
        await ReplicaFence(redis_client, layout, replicas=1, timeout_ms=SHORT_MS).wait()
    assert await redis_client.exists(layout.fence_key())
