"""The upgrade path of ``indexer run``: a release whose mapping version differs from the
serving generation's stamp rebuilds every index in the background, as ``indexer reindex``
does, while the capture loop goes on applying changes to the serving generation.

The loop is not paused and readers are not told: the new generation is loaded from a
snapshot, caught up through the reindex's own slot, and the aliases move when it is current
(``indexer.reindex``). A restart in the middle resumes from the checkpoint; a checkpoint left
by a release with another mapping version is aborted first. Outages are waited out with a
jittered backoff, a bounded number of times; past that, or on any other error, the upgrade
gives up with one log line and the old generation goes on serving until the next start.
"""

from __future__ import annotations

import asyncio
import logging

from cache.errors import StoreUnavailable
from cache.readmodel.keys import KeyLayout
from indexer.reindex import Outcome, Reindexer, ReindexPlan, catch_up_slot_name
from indexer.reindex_state import CheckpointStore, ReindexError
from indexer.retry import Backoff
from indexer.settings import IndexerSettings
from indexer.sinks.elastic import ElasticSink
from indexer.sinks.redis import RedisSink
from indexer.slot import slot_exists
from indexer.source import connect

log = logging.getLogger(__name__)

# Outages waited out before the upgrade gives up until the next start.
MAX_ATTEMPTS = 20


class BackgroundUpgrade:
    """Runs the upgrade's reindex as a task beside the capture loop."""

    def __init__(self, settings: IndexerSettings, search: ElasticSink, cache: RedisSink) -> None:
        self._settings = settings
        self._search = search
        self._cache = cache
        self._stop = asyncio.Event()
        self._task: asyncio.Task[Outcome | None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, mapping_from: object, mapping_to: int) -> None:
        if self.running:
            return
        log.info(
            "mapping version changed, rebuilding the indices in the background",
            extra={"from": mapping_from, "to": mapping_to},
        )
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="upgrade")

    async def wait(self) -> Outcome | None:
        """The upgrade's outcome (None: it gave up, or none ran)."""
        if self._task is None:
            return None
        return await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Stop after the pages in flight; the checkpoint lets the next start resume."""
        if self._task is None:
            return
        self._stop.set()
        try:
            await self._task
        except Exception:
            log.debug("upgrade task ended with an error while stopping", exc_info=True)

    async def discard(self) -> None:
        """Before a full load (a first one, or after a lost slot): stop the upgrade and drop
        any reindex in progress, whose generation the load deletes and whose catch-up slot
        would otherwise hold WAL for ever."""
        await self.stop()
        reindexer, checkpoints = self._reindexer()
        if await checkpoints.load() is None:
            async with await connect(self._settings.pg_dsn, autocommit=True) as conn:
                if not await slot_exists(conn, catch_up_slot_name(self._settings)):
                    return
        removed = await reindexer.abort()
        log.warning("reindex in progress dropped before a full load", extra={"removed": removed})

    def _reindexer(self) -> tuple[Reindexer, CheckpointStore]:
        layout = KeyLayout(self._settings.redis_key_prefix)
        checkpoints = CheckpointStore(self._cache.store.redis, layout.reindex_key)
        reindexer = Reindexer(
            self._settings, self._search, self._cache, checkpoints, stop=self._stop
        )
        return reindexer, checkpoints

    async def _run(self) -> Outcome | None:
        reindexer, checkpoints = self._reindexer()
        backoff = Backoff()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return await self._attempt(reindexer, checkpoints)
            except StoreUnavailable as error:
                log.warning(
                    "upgrade waiting for a dependency",
                    extra={"reason": str(error), "attempt": attempt},
                )
                await backoff.wait(self._stop)
                if self._stop.is_set():
                    return None
            except Exception:  # a bug or a refusal: one line, and the old generation serves
                log.exception("upgrade failed; the old generation keeps serving until restart")
                return None
        log.error("upgrade gave up after repeated outages; it runs again on the next start")
        return None

    async def _attempt(self, reindexer: Reindexer, checkpoints: CheckpointStore) -> Outcome:
        state = await checkpoints.load()
        if state is not None:
            try:
                result = await reindexer.resume(self._settings.load_max_rows_per_second)
                return result.outcome
            except ReindexError as error:
                # Another release's reindex, or one whose generation or slot is gone.
                log.warning("dropping the reindex in progress", extra={"reason": str(error)})
                await reindexer.abort()
        plan = ReindexPlan(max_rows_per_second=self._settings.load_max_rows_per_second)
        result = await reindexer.start(plan)
        return result.outcome
