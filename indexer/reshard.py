"""``indexer reshard --shards N``: hand the projects over from the shards in force to N shards,
mid-stream, with every project owned by exactly one shard at every WAL position.

Run as the tables' owner (a publication with row filters needs it). The steps:

1. refuse while the previous reshard is still handing off (a slot of the plan before the one
   in force exists), or while a shard in force has no slot (nothing would apply its share);
2. one publication per new shard (row filters by project bucket, ``indexer.shards``; one shard
   uses the unfiltered base publication) and one slot per new shard, made with the
   indexer's own connection string;
3. the handoff position H: the WAL flush position once every new slot exists (each slot's
   consistent point is at or before it, so every transaction committing at or after H is in
   every new slot);
4. the new plan, recorded in ``loyalty_indexer.shard_plans``: from here on, the shards in
   force (about once a second) apply only what commits before H, write their position H and
   drop their slots; the new shards, started with ``LOYALTY_SHARD=k/N``, skip what commits
   before H and apply the rest. The order between the two does not matter: every write is
   versioned by commit LSN and every document is rebuilt from the source.

Slots made by a run that failed before step 4 are dropped again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

import psycopg
from psycopg import sql

from cache.types import Lsn
from indexer.changes import WATCHED_TABLES
from indexer.errors import IndexerError, ShardError
from indexer.migrate import (
    MigrationError,
    add_dsn_argument,
    apply_migrations,
    connect_async,
)
from indexer.queries import query
from indexer.settings import IndexerSettings
from indexer.shard_plans import (
    create_slot,
    existing_slots,
    insert_plan,
    lock_plans,
    previous_slots_left,
    read_plans,
)
from indexer.shards import IMPLICIT_PLAN, ShardSpec, shards_of
from indexer.slot import current_wal_lsn, drop_publication, drop_slot, ensure_publication

AsyncConn = psycopg.AsyncConnection[Any]
MAX_SHARDS = 256


async def create_shard_publication(conn: AsyncConn, spec: ShardSpec, base: str) -> str:
    """The publication of ``spec`` (made again: a former plan's may carry other filters);
    one shard takes the base publication, unfiltered."""
    name = spec.publication_name(base)
    if spec.single:
        await ensure_publication(conn, name, WATCHED_TABLES)
        return name
    await drop_publication(conn, name)
    entries = []
    for table in WATCHED_TABLES:
        schema, _, bare = table.rpartition(".")
        entry = sql.SQL("TABLE {}").format(sql.Identifier(schema or "public", bare))
        condition = spec.row_filter(bare)
        if condition is not None:
            # Built from constants and the shard's numbers (``ShardSpec.row_filter``).
            entry = sql.SQL("{} WHERE ({})").format(entry, sql.SQL(condition))
        entries.append(entry)
    statement = sql.SQL(query("create_filtered_publication")).format(
        publication=sql.Identifier(name), tables=sql.SQL(", ").join(entries)
    )
    try:
        await conn.execute(statement)
    except psycopg.Error as error:
        raise ShardError(f"create publication {name!r}: {error}".splitlines()[0]) from error
    return name


async def reshard(admin_dsn: str, settings: IndexerSettings, shards: int) -> list[str]:
    """Put a plan of ``shards`` shards in force; returns what was done, one line each."""
    if not 1 <= shards <= MAX_SHARDS:
        raise ShardError(f"--shards must be from 1 to {MAX_SHARDS}, got {shards}")
    done = [f"applied {name}" for name in await asyncio.to_thread(apply_migrations, admin_dsn)]
    base_slot, base_publication = settings.slot_name, settings.publication
    async with (
        await connect_async(admin_dsn, autocommit=True) as admin,
        await connect_async(settings.pg_dsn, autocommit=True) as own,
    ):
        plans = await read_plans(admin)
        current = plans[0] if plans else IMPLICIT_PLAN
        if shards == current.shards:
            return [*done, f"already {shards} shard(s) in force since {current.handoff}"]
        left = await previous_slots_left(admin, plans, base_slot)
        if left:
            raise ShardError(
                f"the previous reshard is still handing off (slot {left[0]} exists): wait "
                f"for its shards to reach {current.handoff}"
            )
        in_force = [s.slot_name(base_slot) for s in shards_of(current.shards)]
        missing = sorted(set(in_force) - await existing_slots(admin, in_force))
        if missing:
            raise ShardError(
                f"slot {missing[0]} of the plan in force does not exist: start its indexer "
                f"(it makes the first slot with the initial load) before resharding"
            )
        new = shards_of(shards)
        names = [spec.slot_name(base_slot) for spec in new]
        taken = sorted(await existing_slots(admin, names))
        if taken:
            raise ShardError(
                f"slot {taken[0]} exists and belongs to no plan in force: drop it "
                f"(SELECT pg_drop_replication_slot('{taken[0]}')) and run this again"
            )
        for spec in new:
            name = await create_shard_publication(admin, spec, base_publication)
            done.append(f"publication {name}")
        created: list[str] = []
        try:
            points = []
            for name in names:
                points.append(await create_slot(own, name))
                created.append(name)
            async with admin.transaction():
                # No shard reads its peek position between picking the handoff and the
                # plan's commit: each either stays below the handoff or sees the plan.
                await lock_plans(admin, base_slot, exclusive=True)
                handoff = Lsn(max([int(await current_wal_lsn(admin)), *map(int, points)]))
                if not plans:
                    await insert_plan(admin, IMPLICIT_PLAN.shards, IMPLICIT_PLAN.handoff)
                generation = await insert_plan(admin, shards, handoff)
        except BaseException:
            for name in created:
                # One left behind is reported by the next run, which refuses unplanned slots.
                with contextlib.suppress(IndexerError):
                    await drop_slot(own, name)
            raise
        done.extend(f"slot {name}" for name in names)
        done.append(
            f"plan {generation}: {shards} shard(s) from {handoff}; the {current.shards} "
            f"shard(s) in force apply what commits before it, then drop their slots"
        )
        done.append(
            "start: "
            + "; ".join(f"LOYALTY_SHARD={spec} indexer run" for spec in new)
        )
    return done


def add_command(subparsers: Any) -> None:
    """Register ``indexer reshard``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "reshard",
        help="hand the projects over to N indexer shards, mid-stream (as the tables' owner)",
        description="Create the publications and slots of N indexer shards and record the "
        "plan that hands the projects over to them at the current WAL position: the shards "
        "in force apply what commits before it and stop; the new ones, started with "
        "LOYALTY_SHARD=k/N, apply the rest. See docs/scaling.md.",
    )
    parser.add_argument("--shards", type=int, required=True, help="the new number of shards")
    add_dsn_argument(parser)
    parser.set_defaults(handler=run_reshard)


def run_reshard(args: argparse.Namespace, settings: IndexerSettings) -> int:
    try:
        done = asyncio.run(reshard(args.dsn or settings.pg_admin_dsn, settings, args.shards))
    except (MigrationError, ShardError, psycopg.Error) as error:
        print(f"indexer reshard: {error}".splitlines()[0], file=sys.stderr)
        return 1
    for line in done:
        print(line)
    return 0
