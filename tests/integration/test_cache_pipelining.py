"""Concurrent script calls sent as one pipeline (``cache.pipelining``), on the real Redis: each
caller gets its own answer, a script Redis does not know is loaded and the refused calls run
again, a lost connection fails every call of its batch as an outage, and a caller that gave
up does not disturb the others."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest
import redis.asyncio as aioredis
from redis.asyncio import RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from cache.errors import CacheUnavailable
from cache.pipelining import ScriptBatcher
from cache.readmodel.keys import AliasKind, KeyLayout
from cache.scripts import LuaScript
from cache.store import CacheStore

pytestmark = pytest.mark.services


@pytest.fixture
def redis_url(redis_url_each: str) -> str:
    """Every test here runs on the single Redis and on a Redis Cluster."""
    return redis_url_each


def echo_script() -> LuaScript:
    """A script no one loaded yet (its source is unique): its first call meets NOSCRIPT."""
    source = f"-- {uuid.uuid4().hex}\nreturn {{KEYS[1], redis.call('GET', KEYS[1]) or ''}}"
    data = source.encode()
    return LuaScript("echo", data, hashlib.sha1(data).hexdigest())


def count_pipelines(
    monkeypatch: pytest.MonkeyPatch, client: aioredis.Redis | RedisCluster, sizes: list[int]
) -> None:
    """Patch the pipelines of ``client``'s kind to note the size of each of its pipelines."""
    if isinstance(client, RedisCluster):
        send_cluster = ClusterPipeline.execute

        async def counting_cluster(self: ClusterPipeline, raise_on_error: bool = True) -> object:
            if self.cluster_client is client:
                sizes.append(len(self))
            return await send_cluster(self, raise_on_error)

        monkeypatch.setattr(ClusterPipeline, "execute", counting_cluster)
        return
    send = Pipeline.execute

    async def counting(self: Pipeline, raise_on_error: bool = True) -> object:
        if self.connection_pool is client.connection_pool:
            sizes.append(len(self.command_stack))
        return await send(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", counting)


async def test_the_calls_of_one_turn_share_a_pipeline_and_each_gets_its_answer(
    redis_client: aioredis.Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(40):
        await redis_client.set(f"{redis_prefix}k{i}", f"value {i}")
    sizes: list[int] = []
    count_pipelines(monkeypatch, redis_client, sizes)
    batcher = ScriptBatcher(redis_client, echo_script(), max_calls=16)
    answers = await asyncio.gather(*(batcher.run((f"{redis_prefix}k{i}",), ()) for i in range(40)))
    assert answers == [[f"{redis_prefix}k{i}".encode(), f"value {i}".encode()] for i in range(40)]
    # 16 + 16 + 8 calls, then the batches Redis refused with NOSCRIPT, run again once loaded.
    assert sizes[:3] == [16, 16, 8]
    assert sum(sizes[3:]) <= 40 and set(sizes[3:]) <= {16, 8}
    # Loaded now: one pipeline per batch.
    sizes.clear()
    await asyncio.gather(*(batcher.run((f"{redis_prefix}k{i}",), ()) for i in range(10)))
    assert sizes == [10]
    # A lone call is sent on the next turn of the loop, alone.
    sizes.clear()
    assert await batcher.run((f"{redis_prefix}k3",), ()) == [
        f"{redis_prefix}k3".encode(),
        b"value 3",
    ]
    assert sizes == [1]
    await batcher.wait_idle()
    assert batcher.in_flight == 0


async def test_a_caller_that_gave_up_leaves_the_others_their_answers(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    await redis_client.set(f"{redis_prefix}a", "A")
    batcher = ScriptBatcher(redis_client, echo_script())
    gone = batcher.run((f"{redis_prefix}gone",), ())
    kept = batcher.run((f"{redis_prefix}a",), ())
    gone.cancel()
    assert await kept == [f"{redis_prefix}a".encode(), b"A"]
    assert gone.cancelled()


async def test_a_lost_connection_fails_every_call_of_the_batch_as_an_outage() -> None:
    # Nothing listens on port 1: every connection attempt is refused.
    client = aioredis.Redis.from_url(
        "redis://127.0.0.1:1/0", socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    try:
        batcher = ScriptBatcher(client, echo_script())
        results = await asyncio.gather(
            *(batcher.run(("k",), ()) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(result, RedisConnectionError) for result in results)
        # Through the store, the same failure is an outage the read path falls back from.
        store = CacheStore(client, KeyLayout("unused:"))
        lookups = [store.lookup("unused:v:1", "unused:vc:1", "unused:v:") for _ in range(3)]
        outcomes = await asyncio.gather(*lookups, return_exceptions=True)
        assert all(isinstance(outcome, CacheUnavailable) for outcome in outcomes)
        await store.wait_idle()
    finally:
        await client.aclose()


async def test_the_store_lookups_of_one_turn_share_a_pipeline(
    redis_client: aioredis.Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = KeyLayout(redis_prefix)
    store = CacheStore(redis_client, layout)
    await store.load_scripts()
    head = layout.project_keys("proj_a").voucher
    await redis_client.set(f"{head}v_1", b"not an envelope, returned as stored")
    sizes: list[int] = []
    count_pipelines(monkeypatch, redis_client, sizes)
    aliases = [layout.alias_key("proj_a", AliasKind.VOUCHER_CODE, str(i)) for i in range(6)]
    found = await asyncio.gather(
        *(store.lookup(f"{head}v_{i}", aliases[i], head) for i in range(1, 6))
    )
    assert sizes == [5]
    assert found[0] == (b"not an envelope, returned as stored", None, None)
    assert found[1:] == [(None, None, None)] * 4
