"""The shard plans in Postgres (``loyalty_indexer.shard_plans``, SQL in ``sql/shards.sql``):
read by every shard, written by ``indexer reshard``. Driver errors leave as the indexer's
(``SourceUnavailable``: retry; ``SlotError``: anything else)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from cache.types import Lsn
from indexer.errors import ShardError, SlotError, SourceUnavailable, classify_postgres
from indexer.queries import query
from indexer.shards import ShardPlan

AsyncConn = psycopg.AsyncConnection[Any]


def _wrapped(action: str, error: Exception) -> Exception:
    translated = classify_postgres(error)
    if isinstance(translated, SourceUnavailable):
        return SourceUnavailable(f"{action}: {error}")
    return SlotError(f"{action}: {error}")


async def read_plans(conn: AsyncConn) -> list[ShardPlan]:
    """The plan in force and the one before it, newest first; empty when no plan was ever
    made (the implicit plan of one shard)."""
    try:
        cursor = await conn.execute(query("latest_shard_plans"))
        rows = await cursor.fetchall()
    except psycopg.errors.UndefinedTable as error:
        raise ShardError(
            "table loyalty_indexer.shard_plans is missing: run `indexer setup` (migrations)"
        ) from error
    except psycopg.Error as error:
        raise _wrapped("read the shard plans", error) from error
    return [ShardPlan(int(row[0]), int(row[1]), Lsn.parse(row[2])) for row in rows]


async def lock_plans(conn: AsyncConn, name: str, *, exclusive: bool) -> None:
    """The plans' lock for the rest of ``conn``'s transaction (see ``sql/shards.sql``);
    ``name``: the base slot name, so that indexers of other slots do not wait on it."""
    statement = query("shard_plans_lock" if exclusive else "shard_plans_lock_shared")
    try:
        await conn.execute(statement, {"name": name})
    except psycopg.Error as error:
        raise _wrapped("lock the shard plans", error) from error


async def insert_plan(conn: AsyncConn, shards: int, handoff: Lsn) -> int:
    """Put a plan in force; returns its generation."""
    try:
        cursor = await conn.execute(
            query("insert_shard_plan"), {"shards": shards, "handoff": str(handoff)}
        )
        row = await cursor.fetchone()
    except psycopg.Error as error:
        raise _wrapped("record the shard plan", error) from error
    assert row is not None
    return int(row[0])


async def existing_slots(conn: AsyncConn, names: Sequence[str]) -> set[str]:
    """Which of the replication slots ``names`` exist."""
    try:
        cursor = await conn.execute(query("existing_slots"), {"slots": list(names)})
        rows = await cursor.fetchall()
    except psycopg.Error as error:
        raise _wrapped("look up slots", error) from error
    return {str(row[0]) for row in rows}


async def create_slot(conn: AsyncConn, name: str) -> Lsn:
    """A pgoutput slot without a snapshot; returns its consistent point. Waits for the
    transactions running now to end."""
    try:
        cursor = await conn.execute(query("create_logical_slot"), {"slot": name})
        row = await cursor.fetchone()
    except psycopg.Error as error:
        raise _wrapped(f"create slot {name!r}", error) from error
    assert row is not None
    return Lsn.parse(row[0])


async def delete_plans(conn: AsyncConn) -> None:
    """Forget every plan: back to the implicit one of one shard (``indexer drop``)."""
    try:
        await conn.execute(query("delete_shard_plans"))
    except psycopg.Error as error:
        raise _wrapped("delete the shard plans", error) from error
