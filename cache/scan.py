"""One SCAN walk, a page of key names at a time, for every store that sweeps its keys, and
the bulk read of such a page."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from redis.asyncio import RedisCluster

from cache.connect import RedisClient
from cache.readmodel.keys import hash_tag_of


async def key_pages(redis: RedisClient, pattern: str, count: int) -> AsyncIterator[list[str]]:
    """The names matching ``pattern``, one non-empty SCAN page at a time, until the cursor
    comes back to 0 (on a cluster: on every primary in turn). A key present throughout is
    returned at least once; callers tolerate a repeat (SCAN's own guarantee)."""
    if isinstance(redis, RedisCluster):
        async for names in _cluster_key_pages(redis, pattern, count):
            yield names
        return
    cursor = 0
    while True:
        cursor, found = await redis.scan(cursor, match=pattern, count=count)
        names = _names(found)
        if names:
            yield names
        if cursor == 0:
            return


async def _cluster_key_pages(
    redis: RedisCluster, pattern: str, count: int
) -> AsyncIterator[list[str]]:
    # A SCAN cursor belongs to one node; the primaries hold every key between them. A slot
    # that moves during the walk may be seen twice or missed, as a key SCAN sees rehashed.
    await redis.initialize()
    for node in redis.get_primaries():
        cursor = 0
        while True:
            # The cluster client answers a SCAN as ({node name: cursor}, keys).
            cursors, found = await redis.execute_command(
                "SCAN", cursor, "MATCH", pattern, "COUNT", count, target_nodes=node
            )
            cursor = int(cursors[node.name])
            names = _names(found)
            if names:
                yield names
            if cursor == 0:
                break


def _names(found: list[bytes | str]) -> list[str]:
    return [key.decode() if isinstance(key, bytes) else str(key) for key in found]


async def get_many(redis: RedisClient, keys: Sequence[str]) -> list[bytes | None]:
    """The stored bytes of each key, in order: one MGET per hash tag (a project's keys share
    a slot, as a cluster requires of one MGET; a key without a tag alone), all in one
    pipeline."""
    if not keys:
        return []
    groups: dict[str, list[int]] = {}
    for position, key in enumerate(keys):
        # A key without a tag (an API key record) is hashed whole: a group of its own.
        groups.setdefault(hash_tag_of(key) or key, []).append(position)
    async with redis.pipeline(transaction=False) as pipe:
        for positions in groups.values():
            # Raw: redis-py refuses ``mget`` in a cluster pipeline; one tag's keys share a
            # slot, so the raw command is routed whole to its node.
            pipe.execute_command("MGET", *(keys[position] for position in positions))
        answers = await pipe.execute()
    found: list[bytes | None] = [None] * len(keys)
    for positions, values in zip(groups.values(), answers, strict=True):
        for position, value in zip(positions, values, strict=True):
            found[position] = value
    return found
