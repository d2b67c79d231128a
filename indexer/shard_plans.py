"""The shard plans in Postgres (``loyalty_indexer.shard_plans``, SQL in ``sql/shards.sql``):
read by every shard, written by ``indexer reshard``. Driver errors leave through the Postgres
boundary (``SourceUnavailable``: retry; ``SourceBug``: anything else)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from cache.types import Lsn
from indexer.errors import ShardError, postgres_boundary
from indexer.queries import query
from indexer.shards import ShardPlan, shards_of

AsyncConn = psycopg.AsyncConnection[Any]


@postgres_boundary
async def read_plans(conn: AsyncConn) -> list[ShardPlan]:
    """The plan in force and the one before it, newest first; empty when no plan was ever
    made (the implicit plan of one shard)."""
    try:
        cursor = await conn.execute(query("latest_shard_plans"))
    except psycopg.errors.UndefinedTable as error:
        raise ShardError(
            "table loyalty_indexer.shard_plans is missing: run `indexer setup` (migrations)"
        ) from error
    rows = await cursor.fetchall()
    return [ShardPlan(int(row[0]), int(row[1]), Lsn.parse(row[2])) for row in rows]


@postgres_boundary
async def lock_plans(conn: AsyncConn, name: str, *, exclusive: bool) -> None:
    """The plans' lock for the rest of ``conn``'s transaction (see ``sql/shards.sql``);
    ``name``: the base slot name, so that indexers of other slots do not wait on it."""
    statement = query("shard_plans_lock" if exclusive else "shard_plans_lock_shared")
    await conn.execute(statement, {"name": name})


@postgres_boundary
async def insert_plan(conn: AsyncConn, shards: int, handoff: Lsn) -> int:
    """Put a plan in force; returns its generation."""
    cursor = await conn.execute(
        query("insert_shard_plan"), {"shards": shards, "handoff": str(handoff)}
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


@postgres_boundary
async def existing_slots(conn: AsyncConn, names: Sequence[str]) -> set[str]:
    """Which of the replication slots ``names`` exist."""
    cursor = await conn.execute(query("existing_slots"), {"slots": list(names)})
    return {str(row[0]) for row in await cursor.fetchall()}


async def previous_slots_left(
    conn: AsyncConn, plans: Sequence[ShardPlan], base_slot: str
) -> list[str]:
    """The slots of the plan before the one in force that still exist (sorted): while there
    is one, that plan is handing off."""
    if len(plans) < 2:
        return []
    previous = [spec.slot_name(base_slot) for spec in shards_of(plans[1].shards)]
    return sorted(await existing_slots(conn, previous))


@postgres_boundary
async def create_slot(conn: AsyncConn, name: str) -> Lsn:
    """A pgoutput slot without a snapshot; returns its consistent point. Waits for the
    transactions running now to end."""
    cursor = await conn.execute(query("create_logical_slot"), {"slot": name})
    row = await cursor.fetchone()
    assert row is not None
    return Lsn.parse(row[0])


@postgres_boundary
async def delete_plans(conn: AsyncConn) -> None:
    """Forget every plan: back to the implicit one of one shard (``indexer drop``)."""
    await conn.execute(query("delete_shard_plans"))
