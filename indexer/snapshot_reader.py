"""Reading the source as of a slot's consistent point, and the chunks a load writes.

Creating a slot exports a snapshot of exactly its consistent point: reading every table
through it, then streaming from a slot that started at or before that point, leaves no gap;
every snapshot document takes the point as its version, so a later change wins over it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from cache.types import Lsn, ObjectKind
from indexer.changes import TouchedObjects
from indexer.slot import create_slot_with_snapshot, open_snapshot_reader
from indexer.source import DocumentSource, connect


@asynccontextmanager
async def snapshot_source(
    dsn: str, slot_name: str, *, temporary: bool = False
) -> AsyncIterator[tuple[Lsn, DocumentSource]]:
    """A new slot's consistent point and a source reading exactly as of it, through the
    snapshot the slot exported (``temporary``: only the snapshot is wanted)."""
    async with create_slot_with_snapshot(dsn, slot_name, temporary=temporary) as (
        point,
        snapshot_name,
    ):
        reader = await connect(dsn)
        async with reader:
            await open_snapshot_reader(reader, snapshot_name)
            try:
                yield point, DocumentSource(reader)
            finally:
                await reader.rollback()


def touched_rows(kind: ObjectKind | None, ids: list[str], version: int) -> TouchedObjects:
    """Every row of a chunk of one table to write at ``version`` (``None``: API keys)."""
    touched = TouchedObjects()
    for object_id in ids:
        if kind is None:
            touched.mark_api_key(object_id, None, int(version))
        else:
            touched.mark(kind, object_id, None, int(version))
    return touched
