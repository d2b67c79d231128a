"""Catching a new generation up with the change stream through the reindex's own slot.

The catch-up slot was created before the load read anything: its changes are rebuilt from the
source and written into the new generation only (Redis is the running indexer's, which gets
the same changes from its own slot). A segment whose filter changed makes every customer of
its project be rebuilt into the new generation at the change's version: the running
indexer's recompute writes through the aliases, to the old generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from cache.types import Lsn, ObjectKind
from indexer.batch_reader import read_batch
from indexer.changes import touched_by
from indexer.pgoutput import Transaction
from indexer.rebuild import Rebuilder, SinkWrites
from indexer.reindex_load import key_pages
from indexer.reindex_state import ReindexState
from indexer.settings import IndexerSettings
from indexer.sinks.elastic import ElasticSink, VersionedDelete
from indexer.sinks.redis import RedisSink
from indexer.slot import advance_slot, current_wal_lsn, peek_change_pages
from indexer.snapshot_reader import touched_rows
from indexer.source import DocumentSource
from indexer.visibility import wait_until_visible


class CatchUp:
    """Applies the catch-up slot's batches to a generation (``target``: a pinned sink)."""

    def __init__(self, settings: IndexerSettings, cache: RedisSink) -> None:
        self._settings = settings
        self._cache = cache

    async def step(
        self,
        conn: psycopg.AsyncConnection[Any],
        peek_conn: psycopg.AsyncConnection[Any],
        target: ElasticSink,
        state: ReindexState,
    ) -> tuple[bool, Lsn]:
        """One batch of the catch-up slot into the new generation (read on ``peek_conn``,
        rebuilt on ``conn``); returns whether the batch filled up and the slot's new
        position."""
        batch = self._settings.batch_changes
        upto = await current_wal_lsn(conn)

        async def apply(group: list[Transaction]) -> None:
            await self._apply_to_generation(conn, target, state.kinds, group)

        async with peek_change_pages(
            peek_conn, state.slot, self._settings.publication, batch, upto, page_rows=batch
        ) as pages:
            read = await read_batch(pages, batch, apply)
        full = read.rows >= batch
        position = upto if not full else read.transactions[-1].end_lsn
        await advance_slot(conn, state.slot, position)
        return full, position

    async def _apply_to_generation(
        self,
        conn: psycopg.AsyncConnection[Any],
        target: ElasticSink,
        kinds: Sequence[ObjectKind],
        transactions: list[Transaction],
    ) -> None:
        touched = touched_by(transactions)
        if not touched:
            return
        await wait_until_visible(conn, [t.xid for t in transactions])
        source = DocumentSource(conn)
        rebuilder = Rebuilder(source, chunk_ids=self._settings.rebuild_chunk_ids, emit_events=False)
        await rebuilder.expand(touched, target.ids_of_kind)
        resegmented: dict[str, int] = {}
        async for chunk in rebuilder.writes(touched):
            await _apply_kinds(target, chunk, kinds)
            for job in chunk.segment_jobs:
                resegmented[job.project_id] = max(job.version, resegmented.get(job.project_id, 0))
        if ObjectKind.CUSTOMER in kinds:
            for project_id, version in sorted(resegmented.items()):
                await self._rebuild_customers(source, target, project_id, version)

    async def _rebuild_customers(
        self, source: DocumentSource, target: ElasticSink, project_id: str, version: int
    ) -> None:
        """Every customer of a project whose segments changed, rebuilt into the new
        generation at the change's version: a customer rebuilt since keeps its newer one.

        Their membership records are written too, with events: the running indexer's
        recompute decides from the documents, and once the aliases moved it would find these
        already listing their segments and write nothing. A record it wrote first is not
        changed again, so no event is emitted twice."""
        rebuilder = Rebuilder(source, chunk_ids=self._settings.rebuild_chunk_ids)
        async for ids in key_pages(
            source, "customers", project_id, None, self._settings.rebuild_chunk_ids
        ):
            async for chunk in rebuilder.writes(touched_rows(ObjectKind.CUSTOMER, ids, version)):
                await _apply_kinds(target, chunk, (ObjectKind.CUSTOMER,))
                if chunk.memberships:
                    await self._cache.membership.apply(chunk.memberships)


async def _apply_kinds(target: ElasticSink, chunk: SinkWrites, kinds: Sequence[ObjectKind]) -> None:
    """The chunk's documents and removals of ``kinds``, into Elasticsearch only."""
    documents = [(d, v) for d, v in chunk.documents if d.kind in kinds]
    deletes = [
        VersionedDelete(r.kind, r.object_id, r.version) for r in chunk.removed if r.kind in kinds
    ]
    if documents or deletes:
        await target.apply(documents, deletes)
