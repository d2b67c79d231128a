"""One SCAN walk, a page of key names at a time, for every store that sweeps its keys."""

from __future__ import annotations

from collections.abc import AsyncIterator

from redis.asyncio import Redis


async def key_pages(redis: Redis, pattern: str, count: int) -> AsyncIterator[list[str]]:
    """The names matching ``pattern``, one non-empty SCAN page at a time, until the cursor
    comes back to 0. A key present throughout is returned at least once; callers tolerate a
    repeat (SCAN's own guarantee)."""
    cursor = 0
    while True:
        cursor, found = await redis.scan(cursor, match=pattern, count=count)
        names = [key.decode() if isinstance(key, bytes) else str(key) for key in found]
        if names:
            yield names
        if cursor == 0:
            return
