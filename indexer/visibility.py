"""Decoded transactions visible to a new snapshot: what a rebuild from the source needs.

A commit is decoded from the WAL a moment before its transaction leaves the running set, so
a rebuild started at once could read the rows as they were before it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from cache.boundary import translating
from indexer.errors import SourceUnavailable, classify_postgres
from indexer.queries import query


async def still_invisible(conn: psycopg.AsyncConnection[Any], xids: list[int]) -> bool:
    """Whether a new snapshot still sees any of these (32-bit, decoded) xids in progress."""
    with translating(classify_postgres):
        cursor = await conn.execute(query("transactions_still_invisible"), {"xids": xids})
        row = await cursor.fetchone()
    return row is not None and bool(row[0])


async def wait_until_visible(conn: psycopg.AsyncConnection[Any], xids: list[int]) -> None:
    """Wait (briefly: the window is the commit's own bookkeeping) until no transaction of a
    decoded batch is still running for a new snapshot, so a rebuild reads its rows."""
    for attempt in range(1000):
        if not await still_invisible(conn, xids):
            return
        await asyncio.sleep(min(0.001 * (attempt + 1), 0.02))
    raise SourceUnavailable("decoded transactions did not become visible")
