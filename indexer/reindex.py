"""``indexer reindex``: build a new generation of some kinds' indices beside the serving one,
catch it up with the change stream, then move the aliases; or rebuild one tenant in place.

The running ``indexer run`` is not told anything and keeps applying changes to the serving
generation (through the aliases) throughout. The reindex keeps its own generation caught up
with a second, permanent slot (the *catch-up slot*, ``<slot>_rx``), created before anything
is read:

1. **Load** (``--source postgres``): the tables of the kinds are read through a snapshot in
   primary-key pages, each document written at the snapshot's point ``P`` into the new
   generation (refresh off) and into Redis (versioned: a newer value stays). A resumed load
   takes a new snapshot ``P'`` and goes on after the checkpoint's key at ``P'``: rows of the
   pages already loaded that changed meanwhile come again through the catch-up slot, which
   started before ``P``. ``--source index`` copies the serving generation's documents with
   their own versions instead, once the running indexer has applied everything up to the
   catch-up slot's start (so nothing before it is missing from the copy), and reads no
   table.
2. **Catch-up**: the catch-up slot's changes are rebuilt from the source and written into the
   new generation only (Redis is the running indexer's), until a batch does not fill up.
   A segment whose filter changed makes every customer of its project be rebuilt into the
   new generation at the change's version: the running indexer's recompute writes through
   the aliases, to the old generation.
3. **Switch**: refresh back on, the serving generation's stamp copied, then one alias
   request. The running indexer may have written a batch through the old aliases while the
   switch happened; such a batch started before it, so it holds no change past the WAL
   position ``W`` read just after the switch. The catch-up slot goes on to ``W``, then is
   dropped, and the generations that served before are deleted.

Every write is versioned by commit LSN (``external_gte``; Redis envelopes likewise), so
writes of the load, of the catch-up and of the running indexer can arrive in any order and
the newest state wins. A checkpoint (``indexer.reindex_state``) is saved after each page both
sinks acknowledged; ``--resume`` goes on from it, ``--abort`` deletes the half-built
generation, the catch-up slot and the checkpoint.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cache.readmodel.indices import MAPPING_VERSION
from cache.readmodel.keys import KeyLayout
from cache.types import Lsn, ObjectKind
from indexer import metrics
from indexer.reindex_catchup import CatchUp
from indexer.reindex_load import GenerationLoader
from indexer.reindex_project import rebuild_project
from indexer.reindex_state import (
    KIND_ORDER,
    CheckpointStore,
    Phase,
    ReindexError,
    ReindexState,
    Source,
    ordered_kinds,
)
from indexer.settings import IndexerSettings
from indexer.sinks.elastic import ElasticSink
from indexer.sinks.redis import RedisSink
from indexer.slot import (
    create_slot_with_snapshot,
    current_wal_lsn,
    drop_slot,
    slot_exists,
    slot_lost,
)
from indexer.source import connect
from indexer.verify_report import VerifyReport

log = logging.getLogger(__name__)

__all__ = [
    "KIND_ORDER",
    "Outcome",
    "ReindexError",
    "ReindexPlan",
    "ReindexResult",
    "Reindexer",
    "catch_up_slot_name",
    "ordered_kinds",
]


class Outcome(enum.Enum):
    COMPLETE = "complete"
    PAUSED = "paused"  # stopped by a signal; ``--resume`` goes on from the checkpoint


@dataclass(frozen=True, slots=True)
class ReindexPlan:
    kinds: tuple[ObjectKind, ...] = KIND_ORDER
    source: Source = Source.POSTGRES
    max_rows_per_second: int = 0


@dataclass(frozen=True, slots=True)
class ReindexResult:
    outcome: Outcome
    generation: int
    rows_read: int  # by this run
    rows_skipped: int  # already loaded by an earlier run, per the checkpoint
    seconds: float


def catch_up_slot_name(settings: IndexerSettings) -> str:
    return f"{settings.slot_name}_rx"


class Reindexer:
    def __init__(
        self,
        settings: IndexerSettings,
        search: ElasticSink,
        cache: RedisSink,
        checkpoints: CheckpointStore,
        *,
        stop: asyncio.Event | None = None,
        progress: bool | None = None,
    ) -> None:
        self._settings = settings
        self._search = search
        self._cache = cache
        self._checkpoints = checkpoints
        self._stop = stop or asyncio.Event()
        self._terminal = sys.stderr.isatty() if progress is None else progress
        # Test hook: awaited after each page both sinks acknowledged.
        self.after_page: Callable[[ReindexState], Awaitable[None]] | None = None
        self._rows_read = 0

    @classmethod
    def for_settings(
        cls,
        settings: IndexerSettings,
        search: ElasticSink,
        cache: RedisSink,
        redis: Any,
        **options: Any,
    ) -> Reindexer:
        key = KeyLayout(settings.redis_key_prefix).reindex_key
        return cls(settings, search, cache, CheckpointStore(redis, key), **options)

    # -- entry points --------------------------------------------------------------------

    async def start(self, plan: ReindexPlan) -> ReindexResult:
        existing = await self._checkpoints.load()
        if existing is not None:
            raise ReindexError(
                f"a reindex is in progress (generation {existing.generation}, "
                f"{existing.phase}): run with --resume to finish it or --abort to drop it"
            )
        meta = await self._search.indices_ready()
        if meta is None or meta.get("state") != "complete":
            raise ReindexError("no complete generation serves: `indexer run` builds the first one")
        slot = catch_up_slot_name(self._settings)
        async with await connect(self._settings.pg_dsn, autocommit=True) as conn:
            if await slot_exists(conn, slot):
                await drop_slot(conn, slot)  # left by an aborted run whose checkpoint is gone
            # Before anything is read: every change after its start is caught up.
            async with create_slot_with_snapshot(self._settings.pg_dsn, slot) as (point, _):
                log.info("catch-up slot created", extra={"slot": slot, "start": str(point)})
        generation = time.time_ns() // 1_000_000
        kinds = ordered_kinds(plan.kinds)
        # On a copy of the sink: creating indices points its writes at them, and this sink
        # may be the running indexer's own (the upgrade path, ``indexer.upgrade``).
        await self._search.pinned(generation, kinds).create_indices(
            generation,
            {**meta, "state": "reindexing", "mapping": MAPPING_VERSION},
            kinds=kinds,
            loading=True,
        )
        state = ReindexState(
            generation=generation,
            kinds=kinds,
            source=plan.source,
            slot=slot,
            started_at=time.time(),
            mapping=MAPPING_VERSION,
        )
        await self._checkpoints.save(state)
        log.info(
            "reindex started",
            extra={
                "generation": generation,
                "kinds": [str(k) for k in kinds],
                "source": str(plan.source),
            },
        )
        return await self._continue(state, plan.max_rows_per_second)

    async def resume(self, max_rows_per_second: int = 0) -> ReindexResult:
        state = await self._checkpoints.load()
        if state is None:
            raise ReindexError("no reindex to resume")
        if state.mapping != MAPPING_VERSION:
            raise ReindexError(
                f"the reindex in progress was started by a release with mapping version "
                f"{state.mapping}, this one has {MAPPING_VERSION}: run with --abort, then "
                f"start again"
            )
        if not await self._search.generation_exists(state.generation, state.kinds):
            raise ReindexError(
                f"generation {state.generation} is gone (an `indexer run` reload or a drop "
                f"removed it): run with --abort, then start again"
            )
        async with await connect(self._settings.pg_dsn, autocommit=True) as conn:
            lost = await slot_lost(conn, state.slot)
        if lost is not None:
            raise ReindexError(
                f"the catch-up slot {state.slot!r} is {lost}: changes since the reindex "
                f"started cannot be caught up; run with --abort, then start again"
            )
        state = replace(state, resumed=state.resumed + 1)
        await self._checkpoints.save(state)
        log.info(
            "reindex resumed",
            extra={
                "generation": state.generation,
                "phase": str(state.phase),
                "stage": state.stage,
                "rows_done": state.rows_done,
            },
        )
        return await self._continue(state, max_rows_per_second)

    async def abort(self) -> list[str]:
        """Drop the reindex in progress: its generation, its catch-up slot, its checkpoint.
        Returns what was removed."""
        removed: list[str] = []
        state = await self._checkpoints.load()
        slot = state.slot if state is not None else catch_up_slot_name(self._settings)
        if state is not None:
            removed.extend(await self._search.delete_generation(state.generation, state.kinds))
        else:
            # A checkpoint lost with Redis's data: any generation that does not serve is one
            # a reindex or an unfinished load left behind (a load starts over anyway).
            removed.extend(await self._search.delete_idle_generations())
        async with await connect(self._settings.pg_dsn, autocommit=True) as conn:
            if await drop_slot(conn, slot):
                removed.append(f"slot {slot}")
        await self._checkpoints.clear()
        return removed

    async def rebuild_project(
        self, project_id: str, kinds: Sequence[ObjectKind], *, settle_seconds: float = 1.0
    ) -> tuple[int, VerifyReport]:
        """``indexer.reindex_project.rebuild_project`` with this reindexer's clients."""
        return await rebuild_project(
            self._settings,
            self._search,
            self._cache,
            project_id,
            kinds,
            settle_seconds=settle_seconds,
            terminal=self._terminal,
        )

    # -- the phases ------------------------------------------------------------------------

    async def _continue(self, state: ReindexState, max_rows_per_second: int) -> ReindexResult:
        started = time.perf_counter()
        skipped = state.rows_done
        if state.phase is Phase.LOADING:
            metrics.LOADING.set(1)
            try:
                loader = GenerationLoader(
                    self._settings,
                    self._search,
                    self._cache,
                    self._checkpoints.save,
                    stop=self._stop,
                    terminal=self._terminal,
                )
                loader.after_page = self.after_page
                try:
                    state = await loader.load(state, max_rows_per_second)
                finally:
                    self._rows_read += loader.rows_read
            finally:
                metrics.LOADING.set(0)
            if self._stop.is_set():
                return self._result(Outcome.PAUSED, state, skipped, started)
            state = replace(state, phase=Phase.CATCHING_UP)
            await self._checkpoints.save(state)
        if not await self._catch_up_and_switch(state):
            return self._result(Outcome.PAUSED, state, skipped, started)
        await self._checkpoints.clear()
        result = self._result(Outcome.COMPLETE, state, skipped, started)
        log.info(
            "reindex complete",
            extra={
                "generation": state.generation,
                "rows_read": result.rows_read,
                "rows_skipped": skipped,
                "seconds": round(result.seconds, 2),
            },
        )
        return result

    def _result(
        self, outcome: Outcome, state: ReindexState, skipped: int, started: float
    ) -> ReindexResult:
        return ReindexResult(
            outcome, state.generation, self._rows_read, skipped, time.perf_counter() - started
        )

    async def _catch_up_and_switch(self, state: ReindexState) -> bool:
        """Catch the new generation up, switch, catch up to the switch; False: stopped by a
        signal before the switch (after it, the reindex always finishes)."""
        target = self._search.pinned(state.generation, state.kinds)
        catch_up = CatchUp(self._settings, self._cache)
        dsn = self._settings.pg_dsn
        async with (
            await connect(dsn, autocommit=True) as conn,
            await connect(dsn, autocommit=True) as peek_conn,
        ):
            while True:
                if self._stop.is_set():
                    return False
                full, _ = await catch_up.step(conn, peek_conn, target, state)
                if not full:
                    break
            await self._search.end_loading(state.generation, state.kinds)
            serving_meta = await self._search.indices_ready() or {}
            await target.set_meta(
                {**serving_meta, "state": "complete", "mapping": MAPPING_VERSION},
                kinds=state.kinds,
            )
            await self._search.switch_to(state.generation, kinds=state.kinds)
            switched_at = await current_wal_lsn(conn)
            log.info(
                "reindex switched the aliases",
                extra={"generation": state.generation, "wal": str(switched_at)},
            )
            position = Lsn(0)
            while position < switched_at:
                _, position = await catch_up.step(conn, peek_conn, target, state)
            await drop_slot(conn, state.slot)
        return True
