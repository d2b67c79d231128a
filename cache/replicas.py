"""``ReplicaFence``: the indexer's writes copied to replicas before its slot moves past them.

Redis replicates asynchronously. A primary that acknowledged a write and dies before its
replica copied it takes the write along, and the replica promoted in its place serves the
older value for good: the indexer had already confirmed that change to Postgres, which will
not send it again. ``WAIT`` closes that window, with a catch: it counts the replication offset
of the calling connection's own last write, and the indexer's writes go out on pooled
connections (several per node on a cluster). So every primary gets a tiny write of its own
(an ``INCR`` of a fence key in one of its slots) followed by ``WAIT`` on the same connection:
a replica past the fence holds every write its primary applied before it.

With ``replicas`` at 0 (the default: the local stack's Redis has no replica) nothing is sent.
Too few acknowledgements within the timeout raise ``CacheUnavailable``: the batch is retried
(its writes are versioned, so a retry changes nothing) until the replicas keep up, which is
the price of not losing a write to a failover.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode

from cache.boundary import redis_boundary
from cache.connect import RedisClient
from cache.errors import CacheUnavailable
from cache.readmodel.keys import KeyLayout

# Enough numbered keys to land in every one of the 16,384 slots many times over.
FENCE_KEY_TRIES = 1 << 18


class ReplicaFence:
    def __init__(
        self, redis: RedisClient, layout: KeyLayout, *, replicas: int, timeout_ms: int
    ) -> None:
        if replicas < 0 or timeout_ms < 1:
            raise ValueError("replicas must be at least 0 and timeout_ms at least 1")
        self.redis = redis
        self.layout = layout
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self._keys: dict[str, str] = {}  # cluster node name -> a fence key in its slots

    @redis_boundary
    async def wait(self) -> None:
        """Return once every primary's writes so far reached ``replicas`` replicas."""
        if self.replicas == 0:
            return
        redis = self.redis
        if isinstance(redis, RedisCluster):
            await redis.initialize()
            try:
                acks = await asyncio.gather(
                    *(self._fence_node(redis, node) for node in redis.get_primaries())
                )
            except Exception:
                # The slot map may be stale (a failover): read it again before the retry.
                await redis.nodes_manager.initialize()
                raise
        else:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.incr(self.layout.fence_key())
                pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
                _, ack = await pipe.execute()
            acks = [ack]
        fewest = min(int(ack) for ack in acks)
        if fewest < self.replicas:
            raise CacheUnavailable(
                f"{fewest} of {self.replicas} Redis replicas acknowledged the writes within "
                f"{self.timeout_ms} ms"
            )

    async def _fence_node(self, redis: RedisCluster, node: ClusterNode) -> Any:
        key = self._key_on(redis, node)
        if key is None:
            return self.replicas  # a primary without slots holds nothing to lose
        # One connection of the node's pool for both commands: WAIT counts its own writes.
        conn = node.acquire_connection()
        try:
            await conn.send_packed_command(
                conn.pack_commands([("INCR", key), ("WAIT", self.replicas, self.timeout_ms)])
            )
            await conn.read_response()
            return await conn.read_response()
        finally:
            node.release(conn)

    def _key_on(self, redis: RedisCluster, node: ClusterNode) -> str | None:
        """A fence key whose slot ``node`` serves, found once per node (a few tries: the
        primaries share the slots about evenly) and again after the slot moved; None for a
        primary that serves no slot."""
        slots = redis.nodes_manager.slots_cache
        known = self._keys.get(node.name)
        if known is not None and _owner(slots, redis.keyslot(known)) == node.name:
            return known
        for number in range(FENCE_KEY_TRIES):
            key = self.layout.fence_key(number)
            if _owner(slots, redis.keyslot(key)) == node.name:
                self._keys[node.name] = key
                return key
        return None


def _owner(slots: dict[int, list[ClusterNode]], slot: int) -> str | None:
    holders = slots.get(slot)
    return holders[0].name if holders else None
