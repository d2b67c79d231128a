"""Loading a new generation, page by page: primary-key pages of the source read through a
snapshot (``--source postgres``), or pages of the serving generation's documents
(``--source index``). A reader builds pages while several writers send them; the checkpoint
moves over a page once it and every page before it are written (:class:`PageLedger`), so a
load killed at any moment goes on after its last finished page.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from cache.types import ObjectKind
from indexer import metrics
from indexer.progress import Progress
from indexer.quarantine import Quarantine
from indexer.rebuild import TABLE_OF_KIND, Rebuilder, SinkWrites
from indexer.reindex_state import ReindexError, ReindexState, Source
from indexer.settings import IndexerSettings
from indexer.sinks.elastic import ElasticSink, StoredPage, VersionedDelete
from indexer.sinks.redis import RedisSink
from indexer.slot import slot_status
from indexer.snapshot_reader import snapshot_source, touched_rows
from indexer.source import DocumentSource, connect
from indexer.throttle import RowThrottle

log = logging.getLogger(__name__)

# Pages in flight between the reader and the writers, and writers sending at once: the
# reader builds the next pages while two bulk requests are out.
QUEUED_PAGES = 2
WRITERS = 2
# How long ``--source index`` waits for the running indexer to reach the catch-up slot.
INDEXER_WAIT_SECONDS = 60.0


def stages_left(state: ReindexState) -> list[tuple[str, ObjectKind, str | None]]:
    """``(stage, kind, after)`` still to load: stages before the checkpoint's are done."""
    names = [_stage_name(state.source, kind) for kind in state.kinds]
    start = names.index(state.stage) if state.stage in names else 0
    return [
        (name, kind, state.after if name == state.stage else None)
        for name, kind in list(zip(names, state.kinds, strict=True))[start:]
    ]


def _stage_name(source: Source, kind: ObjectKind) -> str:
    return TABLE_OF_KIND[kind] if source is Source.POSTGRES else str(kind)


class PageLedger:
    """Pages are written by several writers and may finish out of order; the checkpoint
    moves only over pages that finished with every page before them."""

    def __init__(self, save: Callable[[ReindexState], Awaitable[None]], state: ReindexState):
        self._save = save
        self.state = state
        self._issued = 0
        self._next = 0
        self._finished: dict[int, tuple[str, str, int]] = {}
        self._lock = asyncio.Lock()

    def issue(self) -> int:
        self._issued += 1
        return self._issued - 1

    async def finish(self, seq: int, mark: tuple[str, str, int]) -> None:
        self._finished[seq] = mark
        state = self.state
        while self._next in self._finished:
            stage, after, rows = self._finished.pop(self._next)
            state = state.finished_chunk(stage, after, rows)
            self._next += 1
        if state is self.state:
            return
        self.state = state
        async with self._lock:
            # A later save may already have gone out while this one waited: only the newest
            # state is written, so the stored checkpoint never goes backwards.
            if state is self.state:
                await self._save(state)


@dataclass(slots=True)
class _Page:
    seq: int
    stage: str
    kind: ObjectKind
    after: str
    rows: int
    chunks: list[SinkWrites] | None = None  # from the source
    stored: list[StoredPage] | None = None  # copied from the serving generation


class GenerationLoader:
    """Loads one reindex's generation; ``stop`` ends the load after the pages in flight."""

    def __init__(
        self,
        settings: IndexerSettings,
        search: ElasticSink,
        cache: RedisSink,
        save: Callable[[ReindexState], Awaitable[None]],
        *,
        stop: asyncio.Event,
        terminal: bool,
    ) -> None:
        self._settings = settings
        self._search = search
        self._cache = cache
        self._save = save
        self._stop = stop
        self._terminal = terminal
        self._quarantine = Quarantine()
        self.rows_read = 0
        # Test hook: awaited after each page both sinks acknowledged.
        self.after_page: Callable[[ReindexState], Awaitable[None]] | None = None

    async def load(self, state: ReindexState, rows_per_second: int = 0) -> ReindexState:
        """Load what the checkpoint says is left, reading at most ``rows_per_second`` (0: no
        cap); returns the last checkpoint (the load stopped early when ``stop`` is set)."""
        throttle = RowThrottle(rows_per_second, sleep=self._pause)
        target = self._search.pinned(state.generation, state.kinds)
        ledger = PageLedger(self._save, state)
        queue: asyncio.Queue[_Page | None] = asyncio.Queue(maxsize=QUEUED_PAGES)
        async with await connect(self._settings.pg_dsn, autocommit=True) as conn:
            await self._quarantine.load(conn)
            writers = [
                asyncio.create_task(self._write_pages(queue, target, ledger, conn))
                for _ in range(WRITERS)
            ]
            try:
                if state.source is Source.POSTGRES:
                    await self._read_source(state, ledger, queue, writers, throttle)
                else:
                    await self._read_index(state, conn, ledger, queue, writers, throttle)
                for _ in writers:
                    await _put(queue, writers, None)
                await asyncio.gather(*writers)
            finally:
                for writer in writers:
                    writer.cancel()
        return ledger.state

    async def _pause(self, seconds: float) -> None:
        """The throttle's sleep, cut short by ``stop``: a slow load stops as promptly."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def _read_source(
        self,
        state: ReindexState,
        ledger: PageLedger,
        queue: asyncio.Queue[_Page | None],
        writers: list[asyncio.Task[None]],
        throttle: RowThrottle,
    ) -> None:
        settings = self._settings
        # A slot of its own only for the snapshot: it goes with its connection. A resumed
        # load reads at a newer point; the catch-up slot started before either.
        snapshot_slot = f"{state.slot}_s{os.getpid()}"
        async with snapshot_source(settings.pg_dsn, snapshot_slot, temporary=True) as (
            point,
            source,
        ):
            totals = {
                TABLE_OF_KIND[kind]: await source.row_count(TABLE_OF_KIND[kind])
                for kind in state.kinds
            }
            rebuilder = Rebuilder(source, chunk_ids=settings.snapshot_chunk_rows, emit_events=False)
            reporter = self._reporter(state, totals)
            try:
                for stage, kind, after in stages_left(state):
                    async for ids in key_pages(
                        source, stage, None, after, settings.snapshot_chunk_rows
                    ):
                        if self._stop.is_set():
                            return
                        chunks = [
                            chunk
                            async for chunk in rebuilder.writes(touched_rows(kind, ids, point))
                        ]
                        page = _Page(ledger.issue(), stage, kind, ids[-1], len(ids), chunks)
                        await _put(queue, writers, page)
                        self._count(reporter, stage, len(ids))
                        await throttle.took(len(ids))
            finally:
                reporter.close()

    async def _read_index(
        self,
        state: ReindexState,
        conn: psycopg.AsyncConnection[Any],
        ledger: PageLedger,
        queue: asyncio.Queue[_Page | None],
        writers: list[asyncio.Task[None]],
        throttle: RowThrottle,
    ) -> None:
        await self._wait_for_indexer(conn, state.slot)
        serving = self._search
        await serving.client.indices.refresh(index=",".join(serving.alias(k) for k in state.kinds))
        totals = {str(kind): await serving.count(kind) for kind in state.kinds}
        reporter = self._reporter(state, totals)
        try:
            for stage, kind, after in stages_left(state):
                async for stored in serving.source_pages(
                    kind, after=after, size=self._settings.snapshot_chunk_rows
                ):
                    if self._stop.is_set():
                        return
                    seq = ledger.issue()
                    page = _Page(seq, stage, kind, stored[-1][0], len(stored), stored=stored)
                    await _put(queue, writers, page)
                    self._count(reporter, stage, len(stored))
                    await throttle.took(len(stored))
        finally:
            reporter.close()

    async def _wait_for_indexer(self, conn: psycopg.AsyncConnection[Any], slot: str) -> None:
        """Until the running indexer applied every change before the catch-up slot's start:
        the serving generation then holds each of them, and the copy reads them there."""
        start = (await slot_status(conn, slot)).confirmed_flush_lsn
        deadline = time.monotonic() + INDEXER_WAIT_SECONDS
        while True:
            applied = (await slot_status(conn, self._settings.slot_name)).confirmed_flush_lsn
            if applied >= start:
                return
            if time.monotonic() > deadline:
                raise ReindexError(
                    f"the indexer's slot is at {applied}, behind the catch-up slot's start "
                    f"{start}, after {INDEXER_WAIT_SECONDS:.0f} s: is `indexer run` running?"
                )
            await asyncio.sleep(0.2)

    def _reporter(self, state: ReindexState, totals: dict[str, int]) -> Progress:
        for stage, total in totals.items():
            metrics.LOAD_ROWS_EXPECTED.labels(stage).set(total)
            metrics.LOAD_ROWS.labels(stage).set(state.done.get(stage, 0))
        reporter = Progress("reindex", totals, terminal=self._terminal, logger=log)
        if state.stage is not None and state.done.get(state.stage):
            reporter(state.stage, state.done[state.stage])  # where the checkpoint left off
        return reporter

    def _count(self, reporter: Progress, stage: str, rows: int) -> None:
        self.rows_read += rows
        reporter(stage, rows)
        metrics.LOAD_ROWS.labels(stage).inc(rows)

    async def _write_pages(
        self,
        queue: asyncio.Queue[_Page | None],
        target: ElasticSink,
        ledger: PageLedger,
        conn: psycopg.AsyncConnection[Any],
    ) -> None:
        while (page := await queue.get()) is not None:
            if page.stored is not None:
                result = await target.apply_sources(page.kind, page.stored)
                if result.refused:
                    metrics.REJECTED_DOCUMENTS.inc(len(result.refused))
            for chunk in page.chunks or ():
                deletes = [VersionedDelete(r.kind, r.object_id, r.version) for r in chunk.removed]
                outcome, _ = await asyncio.gather(
                    target.apply(chunk.documents, deletes),
                    # Objects and aliases only: membership records are the running
                    # indexer's (its recompute decides from them and the documents), and
                    # a mapping or shape change does not change them.
                    self._cache.apply(dataclasses.replace(chunk, memberships=[])),
                )
                await self._quarantine.settle(conn, chunk, outcome.refused)
            await ledger.finish(page.seq, (page.stage, page.after, page.rows))
            if self.after_page is not None:
                await self.after_page(ledger.state)


async def key_pages(
    source: DocumentSource, table: str, project_id: str | None, after: str | None, size: int
) -> AsyncIterator[list[str]]:
    """Primary keys after ``after`` in pages (keyset paging: a page can be resumed from)."""
    while True:
        ids = await source.key_page(table, after=after, project_id=project_id, limit=size)
        if not ids:
            return
        yield ids
        if len(ids) < size:
            return
        after = ids[-1]


async def _put(
    queue: asyncio.Queue[_Page | None], writers: list[asyncio.Task[None]], page: _Page | None
) -> None:
    """Queue a page, surfacing a writer's failure instead of waiting on a full queue."""
    put = asyncio.ensure_future(queue.put(page))
    while not put.done():
        running = {writer for writer in writers if not writer.done()}
        for writer in writers:
            if writer.done() and not writer.cancelled() and writer.exception() is not None:
                put.cancel()
                writer.result()  # raises the writer's error
        if not running:
            put.cancel()
            raise ReindexError("the reindex writers stopped before the end of the load")
        await asyncio.wait({put, *running}, return_when=asyncio.FIRST_COMPLETED)
