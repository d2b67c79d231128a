"""The cache layer against the real Redis: versioned writes, races, invalidations, leases.

Every key lives under this test's ``redis_prefix``; the listener's connection is killed by
its own client id, never by type, so other suites sharing the server are left alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from cache import scripts
from cache.errors import CacheDecodeError, CacheUnavailable
from cache.invalidation import InvalidationListener
from cache.l1 import L1Cache
from cache.readmodel.codec import decode_envelope, decode_invalidation, encode_envelope
from cache.readmodel.documents import AliasKind
from cache.readmodel.keys import KeyLayout
from cache.records import ApiKeyRecord, Envelope, Invalidation, VersionedWrite
from cache.store import CacheStore
from cache.types import ObjectKind
from cache.watermark import WatermarkHolder

pytestmark = pytest.mark.services


@pytest.fixture
def redis_url(redis_url_each: str) -> str:
    """Every test here runs on the single Redis and on a Redis Cluster."""
    return redis_url_each

MESSAGE_WAIT = 10.0  # liveness bound for awaited messages, not a performance assertion


async def next_published(pubsub: Any, wait: float, **options: Any) -> Any:
    """The next message of a sharded subscription: a cluster's pub/sub reads it per node."""
    read = getattr(pubsub, "get_sharded_message", None) or pubsub.get_message
    return await read(timeout=wait, **options)


async def kill_client(redis_client: Any, layout: KeyLayout, client_id: int) -> int:
    """CLIENT KILL of the listener's connection, on the node that serves its channel."""
    if isinstance(redis_client, RedisCluster):
        node = redis_client.get_node_from_key(layout.channel)
        killed = await redis_client.execute_command(
            "CLIENT", "KILL", "ID", str(client_id), target_nodes=node
        )
        return int(killed)
    return int(await redis_client.client_kill_filter(_id=str(client_id)))


@pytest.fixture
def layout(redis_prefix: str) -> KeyLayout:
    return KeyLayout(redis_prefix)


@pytest.fixture
def store(redis_client: aioredis.Redis, layout: KeyLayout) -> CacheStore:
    return CacheStore(redis_client, layout)


class ReconnectGate:
    """Injected as the listener's backoff sleep: holds reconnects while closed."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()

    async def sleep(self, delay: float) -> None:
        await self.open.wait()


@pytest.fixture
def gate() -> ReconnectGate:
    return ReconnectGate()


@pytest.fixture
def l1() -> L1Cache[bytes]:
    return L1Cache(1000, 60.0)


@pytest.fixture
def heard() -> asyncio.Queue[Invalidation]:
    return asyncio.Queue()


@pytest.fixture
async def listener(
    redis_client: aioredis.Redis,
    layout: KeyLayout,
    gate: ReconnectGate,
    l1: L1Cache[bytes],
    heard: asyncio.Queue[Invalidation],
) -> AsyncIterator[InvalidationListener]:
    listener = InvalidationListener(redis_client, layout, sleep=gate.sleep)
    listener.add_cache(l1)
    listener.add_callback(heard.put_nowait)
    await listener.start()
    try:
        await asyncio.wait_for(listener.connected_event.wait(), MESSAGE_WAIT)
        yield listener
    finally:
        gate.open.set()
        await listener.stop()


async def next_message(heard: asyncio.Queue[Invalidation]) -> Invalidation:
    return await asyncio.wait_for(heard.get(), MESSAGE_WAIT)


async def heard_of(heard: asyncio.Queue[Invalidation], key: str) -> Invalidation:
    """Skip messages until one names ``key``."""
    while True:
        message = await next_message(heard)
        if any(named == key for named, _ in message.entries):
            return message


def put(key: str, version: int, data: Any = "x") -> VersionedWrite:
    return VersionedWrite(key, Envelope(version, 1, data))


def tombstone(key: str, version: int) -> VersionedWrite:
    return VersionedWrite(key, Envelope.tombstone(version))


async def stored(store: CacheStore, key: str) -> Envelope | None:
    return await store.get(key)


# -- versioned set ----------------------------------------------------------------------------


async def test_an_older_version_is_a_no_op(store: CacheStore, layout: KeyLayout) -> None:
    key = layout.object_key("p1", ObjectKind.VOUCHER, "v1")
    assert await store.apply_writes([put(key, 10, {"n": 10})]) == 1
    assert await store.apply_writes([put(key, 9, {"n": 9})]) == 0
    assert await stored(store, key) == Envelope(10, 1, {"n": 10})


async def test_an_equal_version_replay_rewrites_the_same_value(
    store: CacheStore, layout: KeyLayout, redis_client: aioredis.Redis
) -> None:
    key = layout.object_key("p1", ObjectKind.VOUCHER, "v1")
    write = put(key, 10, {"n": 10})
    assert await store.apply_writes([write]) == 1
    before = await redis_client.get(key)
    assert await store.apply_writes([write]) == 1
    assert await redis_client.get(key) == before == encode_envelope(write.envelope)


async def test_versions_beyond_2_to_the_53_compare_exactly(
    store: CacheStore, layout: KeyLayout
) -> None:
    key = layout.object_key("p1", ObjectKind.VOUCHER, "v1")
    high = (1 << 64) - 2
    assert await store.apply_writes([put(key, high, "new")]) == 1
    # Equal as doubles, different as integers: the older one must lose.
    assert await store.apply_writes([put(key, high - 1, "old")]) == 0
    assert await store.apply_writes([put(key, (1 << 64) - 1, "newest")]) == 1
    assert await stored(store, key) == Envelope((1 << 64) - 1, 1, "newest")


async def test_a_tombstone_blocks_older_sets_and_yields_to_newer_ones(
    store: CacheStore, layout: KeyLayout, redis_client: aioredis.Redis
) -> None:
    key = layout.object_key("p1", ObjectKind.CUSTOMER, "c1")
    await store.apply_writes([put(key, 5)])
    assert await store.apply_writes([tombstone(key, 8)]) == 1
    ttl_ms = await redis_client.pttl(key)
    assert 0 < ttl_ms <= store.tombstone_ttl_ms
    assert await store.apply_writes([put(key, 7, "resurrected")]) == 0
    assert await store.fill(key, Envelope(7, 1, "late fill")) is False
    envelope = await stored(store, key)
    assert envelope is not None and envelope.is_tombstone and envelope.version == 8
    assert await store.apply_writes([put(key, 9, "recreated")]) == 1
    assert await stored(store, key) == Envelope(9, 1, "recreated")
    assert await redis_client.pttl(key) == -1  # a live value does not keep the tombstone's expiry


async def test_a_tombstone_expires_after_its_ttl(
    redis_client: aioredis.Redis, layout: KeyLayout
) -> None:
    store = CacheStore(redis_client, layout, tombstone_ttl_seconds=0.05)
    key = layout.object_key("p1", ObjectKind.CUSTOMER, "c1")
    await store.apply_writes([tombstone(key, 8)])
    assert 0 < await redis_client.pttl(key) <= 50
    async with asyncio.timeout(MESSAGE_WAIT):
        while True:
            if not await redis_client.exists(key):
                break
            await asyncio.sleep(0.01)
    # Past the replay window the tombstone is gone and the key is writable again.
    assert await store.apply_writes([put(key, 7)]) == 1


async def test_tombstone_ttl_is_the_callers_or_the_default(
    redis_client: aioredis.Redis, layout: KeyLayout
) -> None:
    store = CacheStore(redis_client, layout, tombstone_ttl_seconds=120)
    assert store.tombstone_ttl_ms == 120_000
    assert CacheStore(redis_client, layout).tombstone_ttl_ms == 86_400_000


async def test_batch_apply(
    redis_client: aioredis.Redis, layout: KeyLayout
) -> None:
    store = CacheStore(redis_client, layout, writes_per_call=2)  # force several script calls
    v1 = layout.object_key("p1", ObjectKind.VOUCHER, "v1")
    v2 = layout.object_key("p1", ObjectKind.VOUCHER, "v2")
    code = layout.alias_key("p1", AliasKind.VOUCHER_CODE, "SUMMER")
    old_code = layout.alias_key("p1", AliasKind.VOUCHER_CODE, "SPRING")
    c1 = layout.object_key("p2", ObjectKind.CUSTOMER, "c1")
    src = layout.alias_key("p2", AliasKind.CUSTOMER_SOURCE_ID, "crm-1")
    await store.apply_writes([put(v2, 50, "v2 at 50"), put(old_code, 10, "v1")])

    written = await store.apply_writes(
        [
            put(v1, 20, "v1 at 20"),
            put(v1, 30, "v1 at 30"),  # the same key twice: the newer stays
            put(v1, 25, "v1 at 25"),  # older than the one just written: kept out
            put(v2, 40, "v2 at 40"),  # older than stored
            put(code, 30, "v1"),  # the code moved: new alias ...
            tombstone(old_code, 30),  # ... and a versioned tombstone for the old one
            put(c1, 31, {"name": "Ann"}),
            put(src, 31, "c1"),
            put(layout.app_key("app"), 1, None),
        ]
    )
    assert written == 7
    assert await stored(store, v1) == Envelope(30, 1, "v1 at 30")
    assert await stored(store, v2) == Envelope(50, 1, "v2 at 50")
    alias = await store.resolve_alias("p1", AliasKind.VOUCHER_CODE, "SUMMER")
    assert alias == Envelope(30, 1, "v1")
    old_alias = await store.resolve_alias("p1", AliasKind.VOUCHER_CODE, "SPRING")
    assert old_alias is not None and old_alias.is_tombstone
    assert await store.get_object("p2", ObjectKind.CUSTOMER, "c1") == Envelope(
        31, 1, {"name": "Ann"}
    )
    assert await store.resolve_alias("p2", AliasKind.CUSTOMER_SOURCE_ID, "crm-1") == Envelope(
        31, 1, "c1"
    )
    assert await store.get_object("p3", ObjectKind.CUSTOMER, "c1") is None
    assert await store.apply_writes([]) == 0


async def test_a_malformed_write_is_refused_before_anything_is_written(
    store: CacheStore, layout: KeyLayout, redis_client: aioredis.Redis
) -> None:
    good = layout.object_key("p1", ObjectKind.VOUCHER, "v1")
    bad = layout.object_key("p1", ObjectKind.VOUCHER, "v2")
    with pytest.raises(ResponseError, match="malformed write"):
        await scripts.VERSIONED_SET.run(
            redis_client, (good, bad), (0, encode_envelope(Envelope(1, 1, "x")), 0, b"junk")
        )
    assert await redis_client.exists(good, bad) == 0


async def test_a_value_not_written_here_reads_as_an_error_and_is_overwritten(
    store: CacheStore, layout: KeyLayout, redis_client: aioredis.Redis
) -> None:
    key = layout.object_key("p1", ObjectKind.VOUCHER, "v1")
    await redis_client.set(key, b"not an envelope")
    with pytest.raises(CacheDecodeError):
        await store.get(key)
    assert await store.fill(key, Envelope(3, 1, "x")) is True
    assert await stored(store, key) == Envelope(3, 1, "x")


async def test_scripts_unknown_to_redis_are_loaded_and_run_once(
    redis_client: aioredis.Redis, layout: KeyLayout
) -> None:
    # A copy of the script with a unique comment has a SHA Redis has never seen: NOSCRIPT.
    source = scripts.VERSIONED_SET.source + f"\n-- {uuid.uuid4()}\n".encode()
    fresh = scripts.LuaScript("fresh", source, hashlib.sha1(source).hexdigest())
    a = layout.object_key("p1", ObjectKind.VOUCHER, "a")
    b = layout.object_key("p2", ObjectKind.VOUCHER, "b")
    calls = [
        scripts.ScriptCall(fresh, (a,), (0, encode_envelope(Envelope(1, 1, "a")))),
        scripts.ScriptCall(fresh, (b,), (0, encode_envelope(Envelope(1, 1, "b")))),
    ]
    async with redis_client.pubsub() as pubsub:
        await pubsub.ssubscribe(layout.channel)
        assert await next_published(pubsub, MESSAGE_WAIT) is not None
        results = await scripts.run_pipelined(
            redis_client, calls, then=[("SPUBLISH", layout.channel, b"after")]
        )
        assert results == [[1], [1]]
        # The commands that follow the writes ran again after the reloaded calls.
        for _ in range(2):
            message = await next_published(pubsub, 5, ignore_subscribe_messages=True)
            assert message is not None and message["data"] == b"after"
    assert (await redis_client.script_exists(fresh.sha)) == [True]


# -- the read path racing the write path ------------------------------------------------------


async def test_a_fill_racing_a_newer_cdc_write_never_goes_backwards(
    store: CacheStore,
    layout: KeyLayout,
    l1: L1Cache[bytes],
    listener: InvalidationListener,
    heard: asyncio.Queue[Invalidation],
) -> None:
    key = layout.object_key("p1", ObjectKind.VOUCHER, "v1")

    # 1. A reader misses L1 and L2, and reads version 100 from Elasticsearch.
    token = l1.begin_fill(key)
    read_from_source = Envelope(100, 1, {"balance": 100})
    # 2. Before it fills, the indexer writes version 200 and its invalidation arrives.
    await store.apply_writes([put(key, 200, {"balance": 200})])
    assert (await next_message(heard)).entries == ((key, 200),)
    # 3. The reader's fill and install come last, and change nothing.
    assert await store.fill(key, read_from_source) is False
    assert await stored(store, key) == Envelope(200, 1, {"balance": 200})
    assert not l1.install(key, b'{"balance":100}', 100, token)
    assert l1.get(key) is None

    # The other order: the fill lands first, then the indexer's newer write wins.
    other = layout.object_key("p1", ObjectKind.VOUCHER, "v2")
    assert await store.fill(other, Envelope(100, 1, "from source")) is True
    await store.apply_writes([put(other, 200, "from cdc")])
    assert await stored(store, other) == Envelope(200, 1, "from cdc")

    # A fill of a version the indexer is about to write (search ahead of Redis) is kept,
    # and the indexer's own write of that version is an idempotent rewrite.
    ahead = layout.object_key("p1", ObjectKind.VOUCHER, "v3")
    assert await store.fill(ahead, Envelope(300, 1, "same")) is True
    assert await store.apply_writes([put(ahead, 250, "older replay"), put(ahead, 300, "same")]) == 1
    assert await stored(store, ahead) == Envelope(300, 1, "same")

    # A delete racing a fill: the late fill cannot resurrect the object.
    deleted = layout.object_key("p1", ObjectKind.VOUCHER, "v4")
    token = l1.begin_fill(deleted)
    await store.apply_writes([tombstone(deleted, 400)])
    await heard_of(heard, deleted)
    assert await store.fill(deleted, Envelope(350, 1, "stale")) is False
    envelope = await stored(store, deleted)
    assert envelope is not None and envelope.is_tombstone
    assert not l1.install(deleted, b"stale", 350, token)


# -- invalidations ----------------------------------------------------------------------------


async def test_one_publish_per_batch_naming_every_key(
    redis_client: aioredis.Redis, layout: KeyLayout
) -> None:
    store = CacheStore(redis_client, layout, writes_per_call=1)
    writes = [
        put(layout.object_key("p1", ObjectKind.VOUCHER, "v1"), 5),
        put(layout.alias_key("p1", AliasKind.VOUCHER_CODE, "CODE"), 5),
        tombstone(layout.object_key("p2", ObjectKind.SEGMENT, "s1"), 6),
    ]
    async with redis_client.pubsub() as pubsub:
        await pubsub.ssubscribe(layout.channel)
        assert await next_published(pubsub, MESSAGE_WAIT) is not None
        assert await store.apply_writes(writes) == 3
        await redis_client.spublish(layout.channel, b"end of test")
        received = []
        while True:
            message = await next_published(pubsub, 5, ignore_subscribe_messages=True)
            assert message is not None
            if message["data"] == b"end of test":
                break
            received.append(message["data"])
    assert len(received) == 1
    assert decode_invalidation(received[0]) == Invalidation(
        tuple((w.key, w.envelope.version) for w in writes)
    )


async def test_the_listener_invalidates_l1(
    store: CacheStore,
    layout: KeyLayout,
    l1: L1Cache[bytes],
    listener: InvalidationListener,
    heard: asyncio.Queue[Invalidation],
) -> None:
    assert l1.enabled
    changed = layout.object_key("p1", ObjectKind.VOUCHER, "v1")
    current = layout.object_key("p1", ObjectKind.VOUCHER, "v2")
    untouched = layout.object_key("p1", ObjectKind.VOUCHER, "v3")
    for key in (changed, current, untouched):
        assert l1.install(key, b"{}", 5, l1.begin_fill(key))
    await store.apply_writes([put(changed, 6), put(current, 5)])
    await next_message(heard)
    assert l1.get(changed) is None
    assert l1.get(current) is not None  # L1 already holds that version
    assert l1.get(untouched) is not None


async def test_a_prefix_filtered_cache_hears_only_its_keys(
    redis_client: aioredis.Redis,
    store: CacheStore,
    layout: KeyLayout,
    listener: InvalidationListener,
    heard: asyncio.Queue[Invalidation],
) -> None:
    api_keys: L1Cache[ApiKeyRecord | None] = L1Cache(100, 60.0)
    listener.add_cache(api_keys, key_prefix=layout.app_key_prefix)
    assert api_keys.enabled  # added while subscribed
    app = layout.app_key("app")
    token = api_keys.begin_fill(app)
    await store.apply_writes([put(layout.object_key("p1", ObjectKind.VOUCHER, "v1"), 1)])
    await next_message(heard)
    assert api_keys.install(app, None, 0, token)  # an object key changed, not this one
    token = api_keys.begin_fill(app)
    await store.put_api_key(ApiKeyRecord("app", "p1", "0" * 64, None, False), 2)
    await next_message(heard)
    assert api_keys.get(app) is None
    assert not api_keys.install(app, None, 0, token)


async def test_a_lost_subscription_flushes_and_bypasses_l1_until_resubscribed(
    redis_client: aioredis.Redis,
    store: CacheStore,
    layout: KeyLayout,
    l1: L1Cache[bytes],
    listener: InvalidationListener,
    gate: ReconnectGate,
    heard: asyncio.Queue[Invalidation],
) -> None:
    key = layout.object_key("p1", ObjectKind.VOUCHER, "v1")
    assert l1.install(key, b"v5", 5, l1.begin_fill(key))
    token_before = l1.begin_fill(key)
    first_id = listener.client_id
    assert first_id is not None

    gate.open.clear()  # hold the reconnect so the disconnected state can be observed
    assert await kill_client(redis_client, layout, first_id) == 1
    await asyncio.wait_for(listener.disconnected_event.wait(), MESSAGE_WAIT)
    assert not listener.connected
    assert listener.disconnects == 1
    assert not l1.enabled
    assert l1.get(key) is None
    token_during = l1.begin_fill(key)
    assert not l1.install(key, b"v5", 5, token_during)
    # A change made now is never heard of by this listener.
    await store.apply_writes([put(key, 6)])

    gate.open.set()
    await asyncio.wait_for(listener.connected_event.wait(), MESSAGE_WAIT)
    assert listener.connected
    assert listener.client_id != first_id
    assert l1.enabled
    assert l1.get(key) is None  # the entry that missed its invalidation is gone
    assert not l1.install(key, b"v5", 5, token_before)
    assert not l1.install(key, b"v5", 5, token_during)
    assert l1.install(key, b"v6", 6, l1.begin_fill(key))
    # And the new subscription hears changes again.
    await store.apply_writes([put(key, 7)])
    assert (await next_message(heard)).entries == ((key, 7),)
    assert l1.get(key) is None


async def test_stopping_the_listener_disables_its_caches(
    redis_client: aioredis.Redis, layout: KeyLayout, l1: L1Cache[bytes]
) -> None:
    listener = InvalidationListener(redis_client, layout)
    listener.add_cache(l1)
    assert not l1.enabled
    async with listener:
        await asyncio.wait_for(listener.connected_event.wait(), MESSAGE_WAIT)
        assert l1.enabled
    assert not l1.enabled
    assert not listener.connected


async def test_an_unreadable_message_flushes_l1(
    redis_client: aioredis.Redis,
    layout: KeyLayout,
    l1: L1Cache[bytes],
    listener: InvalidationListener,
    heard: asyncio.Queue[Invalidation],
    store: CacheStore,
) -> None:
    key = layout.object_key("p1", ObjectKind.VOUCHER, "v1")
    assert l1.install(key, b"{}", 5, l1.begin_fill(key))
    await redis_client.spublish(layout.channel, b"\xc1garbage")
    await store.set_watermark(1)  # a readable message after it, to know both were handled
    await next_message(heard)
    assert l1.get(key) is None
    assert listener.connected


# -- watermark ----------------------------------------------------------------------------------


async def test_the_watermark_never_goes_backwards(
    redis_client: aioredis.Redis,
    store: CacheStore,
    listener: InvalidationListener,
    heard: asyncio.Queue[Invalidation],
) -> None:
    holder = WatermarkHolder()
    listener.add_callback(holder.on_invalidation)
    assert await store.get_watermark() is None
    assert await store.set_watermark(100) is True
    assert await store.set_watermark(99) is False
    assert await store.set_watermark(100) is False
    assert await store.get_watermark() == 100
    high = (1 << 64) - 1
    assert await store.set_watermark(high) is True
    assert await store.set_watermark(high - 1) is False
    assert await store.get_watermark() == high
    # Only the moves were published.
    assert (await next_message(heard)).watermark == 100
    assert (await next_message(heard)).watermark == high
    assert holder.value == high


async def test_a_stored_watermark_advance_refuses_to_recreate_a_lost_one(
    store: CacheStore,
) -> None:
    assert await store.advance_stored_watermark(5) is None
    assert await store.get_watermark() is None  # nothing written over the loss
    assert await store.set_watermark(5) is True
    assert await store.advance_stored_watermark(7) is True
    assert await store.advance_stored_watermark(6) is False
    assert await store.get_watermark() == 7


async def test_shard_positions_combine_into_the_least_and_never_go_backwards(
    store: CacheStore, listener: InvalidationListener, heard: asyncio.Queue[Invalidation]
) -> None:
    both = ("2:0", "2:1")
    # A shard missing from the plan's fields holds the watermark back.
    assert await store.advance_shard_watermark("2:0", 50, both) is None
    assert await store.get_watermark() is None
    assert await store.advance_shard_watermark("2:1", 30, both) == 30
    assert await store.get_watermark() == 30
    assert (await next_message(heard)).watermark == 30
    assert await store.advance_shard_watermark("2:1", 80, both) == 50
    # Positions never go backwards: a replayed older position changes nothing.
    assert await store.advance_shard_watermark("2:0", 10, both) == 50
    assert await store.shard_watermarks() == {"2:0": 50, "2:1": 80}
    # A shard handing off (field "1:0") holds the watermark below its position.
    assert await store.advance_shard_watermark("1:0", 40, (*both, "1:0")) == 40
    assert await store.get_watermark() == 50  # the stored watermark never goes back
    # Over a lost position nothing is written, and the caller is told.
    assert await store.advance_shard_watermark("3:0", 5, ("3:0",), only_over_stored=True) == -1
    assert "3:0" not in await store.shard_watermarks()
    high = (1 << 64) - 1
    assert await store.advance_shard_watermark("2:0", high, ("2:0",)) == high
    assert await store.get_watermark() == high


async def test_a_reconnect_hook_refreshes_the_watermark(
    redis_client: aioredis.Redis, store: CacheStore, layout: KeyLayout
) -> None:
    await store.set_watermark(42)  # published before anyone listens
    holder = WatermarkHolder()
    listener = InvalidationListener(redis_client, layout)
    listener.add_connect_hook(lambda: holder.refresh(store))
    async with listener:
        await asyncio.wait_for(listener.connected_event.wait(), MESSAGE_WAIT)
        assert holder.value == 42


# -- API keys ------------------------------------------------------------------------------------


async def test_api_key_records(store: CacheStore) -> None:
    record = ApiKeyRecord("app_1", "p1", "a" * 64, 600, False)
    assert await store.get_api_key("app_1") is None
    assert await store.put_api_key(record, 10) is True
    assert await store.get_api_key("app_1") == record
    revoked = dataclasses.replace(record, revoked=True)
    assert await store.put_api_key(revoked, 11) is True
    assert await store.put_api_key(record, 10) is False  # a replayed older state
    assert await store.get_api_key("app_1") == revoked
    assert await store.delete_api_key("app_1", 12) is True
    assert await store.get_api_key("app_1") is None
    assert await store.put_api_key(record, 11) is False  # no resurrection


# -- rate limit ------------------------------------------------------------------------------------


async def test_concurrent_leases_never_grant_more_than_the_limit(store: CacheStore) -> None:
    leases = await asyncio.gather(*(store.lease_tokens("app_1", 50, 5) for _ in range(100)))
    assert sum(lease.granted for lease in leases) == 50
    assert all(lease.remaining >= 0 for lease in leases)
    assert min(lease.remaining for lease in leases) == 0
    assert all(1 <= lease.reset_seconds <= 60 for lease in leases)
    spent = await store.lease_tokens("app_1", 50, 5)
    assert (spent.granted, spent.remaining) == (0, 0)
    assert 1 <= spent.reset_seconds <= 60
    # Another app id has its own bucket.
    assert (await store.lease_tokens("app_2", 50, 5)).granted == 5


async def test_leases_shrink_as_the_limit_nears(store: CacheStore) -> None:
    grants: list[int] = []
    while (lease := await store.lease_tokens("app_1", 1000, 100, divisor=8)).granted:
        left = 1000 - sum(grants)
        assert lease.granted <= -(-left // 8)
        assert lease.remaining == left - lease.granted
        grants.append(lease.granted)
    assert sum(grants) == 1000
    assert grants[0] == 100
    assert grants == sorted(grants, reverse=True)
    assert grants[-1] == 1


async def test_the_window_is_the_bucket_lifetime(
    store: CacheStore, layout: KeyLayout, redis_client: aioredis.Redis
) -> None:
    lease = await store.lease_tokens("app_1", 10, 10, divisor=1, window_seconds=5)
    assert (lease.granted, lease.remaining) == (10, 0)
    assert 1 <= lease.reset_seconds <= 5
    bucket = layout.rate_limit_key("app_1")
    assert 0 < await redis_client.pttl(bucket) <= 5000
    await redis_client.delete(bucket)  # the window ends
    assert (await store.lease_tokens("app_1", 10, 10, divisor=1)).granted == 10


# -- boundary --------------------------------------------------------------------------------------


async def test_driver_errors_become_cache_unavailable(layout: KeyLayout) -> None:
    closed = aioredis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    try:
        store = CacheStore(closed, layout)
        with pytest.raises(CacheUnavailable):
            await store.get_object("p1", ObjectKind.VOUCHER, "v1")
        with pytest.raises(CacheUnavailable):
            await store.apply_writes([put(layout.object_key("p1", ObjectKind.VOUCHER, "v"), 1)])
        with pytest.raises(CacheUnavailable):
            await store.ping()
    finally:
        await closed.aclose()


async def test_decoded_responses_are_refused(layout: KeyLayout) -> None:
    client = aioredis.Redis(decode_responses=True)
    try:
        with pytest.raises(ValueError):
            CacheStore(client, layout)
    finally:
        await client.aclose()


async def test_bulk_reads_take_keys_of_many_projects_and_api_keys_at_once(
    store: CacheStore, layout: KeyLayout
) -> None:
    """One bulk read of a scanned page: on a cluster its keys lie in many slots."""
    objects = [layout.object_key(f"p{i}", ObjectKind.VOUCHER, "v") for i in range(12)]
    await store.apply_writes([VersionedWrite(key, Envelope(3, 1, key)) for key in objects])
    for i in range(4):
        await store.put_api_key(ApiKeyRecord(f"app_{i}", "p1", "0" * 64, None, False), 2)
    wanted = [*objects, *(layout.app_key(f"app_{i}") for i in range(4)), objects[0]]
    wanted.append(layout.object_key("p99", ObjectKind.VOUCHER, "absent"))
    found = await store.get_raw_many(wanted)
    assert found[-1] is None
    assert all(blob is not None for blob in found[:-1])
    assert found[0] == found[-2]
    assert [decode_envelope(blob).data for blob in found[:12] if blob] == objects
