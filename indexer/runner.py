"""The capture loop: peek a bounded batch from the slot, rebuild what it touched, write both
sinks, advance.

A step reads ``pg_current_wal_lsn()`` and peeks at most ``batch_changes`` messages up to it.
Decoded changes only name the objects they touch (plus fan-out: a renamed campaign's
vouchers, the customers of a project whose auto-update segments changed); once the batch's
transactions are visible, each object is rebuilt from the source (``indexer.rebuild``) and
the chunks are written to Elasticsearch and Redis together. A row that cannot become a
document (the rebuild cannot build it, Elasticsearch refuses it for good) is recorded in the
quarantine (``indexer.quarantine``) before the slot moves: one row never holds back the rest.

The slot is advanced only after both sinks acknowledged the batch, then the watermark in
Redis; a crash replays the batch, and every write is versioned by commit LSN, so the replay
changes nothing. A batch that did not fill up moves the slot and the watermark to the position
read at the start (the heartbeat), keeping WAL retention bounded while only unwatched tables
take writes. Redis found without this process's position (it lost its data) is reloaded from
the source at the slot's position. An outage is waited out with a backoff, then the batch is
peeked again.

A process is one shard of the plans in force (``indexer.shards``, ``indexer.shard_role``): it
reads its own slot, writes its own projects only, stops at the handoff when a reshard retires
its plan, and the watermark is the least position of the shards in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from cache.errors import StoreUnavailable
from cache.readmodel.indices import MAPPING_VERSION
from cache.records import SegmentJob
from cache.types import Lsn
from indexer import metrics
from indexer.batch_reader import read_batch
from indexer.changes import WATCHED_TABLES, touched_by
from indexer.errors import ShardError, SlotError, SlotLost
from indexer.in_flight import WritesInFlight
from indexer.lag import lag_seconds
from indexer.pgoutput import Transaction
from indexer.quarantine import Quarantine
from indexer.rebuild import Rebuilder, SinkWrites
from indexer.recompute import Clock, SegmentClock, SegmentRecompute, wall_clock_us
from indexer.retry import Backoff
from indexer.segment_index import SegmentIndex
from indexer.settings import IndexerSettings
from indexer.shard_filter import owned_writes
from indexer.shard_role import ShardState
from indexer.shards import ShardRole, ShardSpec
from indexer.sinks.elastic import ElasticSink, RefusedDocument, VersionedDelete
from indexer.sinks.redis import RedisSink
from indexer.slot import (
    advance_slot,
    drop_slot,
    ensure_publication,
    peek_change_pages,
    slot_lost,
    slot_status,
)
from indexer.snapshot import initial_load, reload_cache
from indexer.source import DocumentSource, connect
from indexer.standby import StandbyReads
from indexer.upgrade import BackgroundUpgrade
from indexer.visibility import wait_until_visible

log = logging.getLogger(__name__)

# Faults the loop waits out: the batch is attempted again from the slot after a backoff.
# Every store's boundary turns its driver's outages into this one class.
RETRYABLE = (StoreUnavailable,)

BatchHook = Callable[[list[Transaction]], Awaitable[None]]

# Full batches in a row before the serving indices refresh at the catch-up interval: one
# transaction larger than a batch is not a backlog worth a settings change.
CATCH_UP_AFTER_FULL_STEPS = 2


@dataclass(frozen=True, slots=True)
class StepResult:
    transactions: int
    changes: int
    watermark: Lsn | None
    full: bool


class Indexer:
    """One consumer of one slot, writing to one search sink and one cache sink."""

    def __init__(self, settings: IndexerSettings, search: ElasticSink, cache: RedisSink) -> None:
        self._settings = settings
        self._search = search
        self._cache = cache
        # This process's share of the projects, and the slot and publication that carry it.
        self.shard = ShardSpec.parse(settings.shard)
        self.slot = self.shard.slot_name(settings.slot_name)
        self.publication = self.shard.publication_name(settings.publication)
        self.shard_state = ShardState(self.shard, settings.slot_name)
        self._fields_seen: tuple[str, ...] = ()
        # Set once a shard of a previous plan applied every transaction before the handoff
        # and dropped its slot: the loop ends.
        self.retired = False
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._peek_conn: psycopg.AsyncConnection[Any] | None = None
        self._standby = (
            StandbyReads(
                settings.pg_standby_dsn,
                max_wait_seconds=settings.pg_standby_max_wait_ms / 1000,
                max_lag_bytes=settings.pg_standby_max_lag_bytes,
            )
            if settings.pg_standby_dsn
            else None
        )
        self._quarantine = Quarantine()
        # Epoch microseconds now, for relative-date segment filters (tests set their own).
        self.clock: Clock = wall_clock_us
        self.segment_index = SegmentIndex(search.client, settings.es_index_prefix)
        self.recompute = SegmentRecompute(
            search, self.segment_index, cache.membership, clock=self._now_us,
            owns=self.shard_state.owns_segments,
        )
        self.segment_clock = SegmentClock(
            search, self.segment_index, cache.membership, self.recompute, clock=self._now_us,
            owns=self.shard_state.owns_segments,
        )
        self._next_tick = 0.0
        # Full batches in a row, and whether the serving indices refresh at the catch-up
        # interval (``_pace_refresh``).
        self._full_steps = 0
        self.catching_up = False
        # The writes of the last chunk applied, while the next one is read and built.
        self._writing = WritesInFlight()
        self.watermark: Lsn | None = None
        # For /healthz and the lag timer (Unix times): when ``prepare`` last finished (None
        # while it runs), when a step last succeeded, and the moment up to which every
        # commit is known applied (``indexer.lag``).
        self.prepared_at: float | None = None
        self.last_step_at: float | None = None
        self.applied_until: float | None = None
        # A load does not look at the stop event: shutdown cancels it, and says so.
        self.loading = False
        # Test hook: awaited after the sinks applied a batch and before the slot advances.
        self.before_advance: BatchHook | None = None
        # Set by ``run``: a load stops at it after the pages in flight.
        self._stop = asyncio.Event()
        # A release with another mapping version rebuilds beside the loop (``indexer.upgrade``).
        self.upgrade = BackgroundUpgrade(settings, search, cache)

    def _now_us(self) -> int:
        return self.clock()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await connect(self._settings.pg_dsn, autocommit=True)
        return self._conn

    async def _peek_connection(self) -> psycopg.AsyncConnection[Any]:
        """The connection whose cursor reads a batch while the other rebuilds from it."""
        if self._peek_conn is None or self._peek_conn.closed:
            self._peek_conn = await connect(self._settings.pg_dsn, autocommit=True)
        return self._peek_conn

    async def close(self) -> None:
        await self._writing.abandon()
        await self.upgrade.stop()
        await self.recompute.close()
        await self._drop_connection()

    async def prepare(self) -> None:
        """Publication, slot and indices in place; runs the initial load when needed."""
        self.prepared_at = None
        conn = await self._connection()
        role = await self.shard_state.read(conn)
        lost = await slot_lost(conn, self.slot)
        if role.state == "retiring" and lost == "dropped":
            # It handed off before a restart: nothing is left to do.
            self._retire_done(role)
            return
        if self.shard.single:
            await ensure_publication(conn, self.publication, WATCHED_TABLES)
        await self._quarantine.load(conn)
        meta = await self._search.indices_ready()
        # The indices carry the base slot name: every shard plan feeds the same generation.
        slot = self._settings.slot_name
        has_slot = lost is None
        complete = (
            meta is not None
            and meta.get("state") == "complete"
            and meta.get("slot") == slot
            and meta.get("mapping") == MAPPING_VERSION
        )
        if not self.shard.single:
            await self._prepare_shard(conn, role, lost, complete)
            return
        # The same indices and slot under another release's mapping: they keep serving and
        # taking changes while the new generation is built beside them.
        upgrading = (
            has_slot
            and meta is not None
            and meta.get("state") == "complete"
            and meta.get("slot") == slot
            and meta.get("mapping") != MAPPING_VERSION
        )
        if has_slot and (complete or upgrading):
            await self._search.apply_replicas()
            await self._end_catch_up()
            if upgrading and meta is not None:
                self.upgrade.start(meta.get("mapping"), MAPPING_VERSION)
            await self._start_at_handoff(conn, role)
            self.prepared_at = time.time()
            return
        if complete and lost is not None:
            # The indices were complete, so the slot went from under them: every change
            # since the last batch is unreadable. The generation serving keeps answering
            # while a new one loads from a fresh snapshot, then the aliases switch.
            metrics.SLOT_LOSSES.labels(lost).inc()
            log.error(
                "replication slot lost, rebuilding the indices from a new snapshot",
                extra={"slot": slot, "reason": lost},
            )
        log.info(
            "initial load needed",
            extra={"slot_exists": has_slot, "index_meta": meta},
        )
        await self.upgrade.discard()
        # Every commit before the load's consistent point is in the load, and that point is
        # taken after this instant.
        started = time.time()
        self.loading = True
        try:
            point = await initial_load(
                self._settings,
                conn,
                self._search,
                self._cache,
                quarantine=self._quarantine,
                stop=self._stop,
            )
        finally:
            self.loading = False
        if point is None:
            return  # stopped; ``prepared_at`` stays None
        await self._cache.advance_shard_watermark(self.shard.field, point, role.fields)
        self.watermark = point
        self.applied_until = started
        self.prepared_at = time.time()

    async def _prepare_shard(
        self,
        conn: psycopg.AsyncConnection[Any],
        role: ShardRole,
        lost: str | None,
        complete: bool,
    ) -> None:
        """A shard of several loads nothing: the indices were loaded, and its slot made, before
        the plan that names it (``indexer reshard``)."""
        if lost is not None:
            metrics.SLOT_LOSSES.labels(lost).inc()
            raise ShardError(
                f"shard {self.shard}: replication slot {self.slot!r} {lost}; a shard does not "
                f"reload alone: reshard to one shard (`indexer reshard --shards 1`), whose "
                f"indexer reloads into a new generation, then back"
            )
        if not complete:
            raise ShardError(
                f"shard {self.shard}: the indices are not complete under this release's "
                f"mapping ({MAPPING_VERSION}); loads and upgrades run with one shard: reshard "
                f"to one shard, let it finish, then reshard again"
            )
        await self._search.apply_replicas()
        await self._end_catch_up()
        await self._start_at_handoff(conn, role)
        self.prepared_at = time.time()

    async def _start_at_handoff(
        self, conn: psycopg.AsyncConnection[Any], role: ShardRole
    ) -> None:
        """A shard of the plan in force skips what commits before the plan's handoff (the
        previous plan's shards apply it).

        A shard without a position in Redis gets one while Redis holds a watermark (it did
        not lose its data: the watermark cannot be written again without every shard's
        position): a new plan's shard the handoff, a store written by a release without
        shards the watermark it kept. Only a store that lost its data is reloaded."""
        if role.state == "active" and int(role.start) > 0:
            await advance_slot(conn, self.slot, role.start)
        if self.shard.field in await self._cache.store.shard_watermarks():
            return
        stored = await self._cache.get_watermark()
        if stored is not None:
            position = role.start if role.state == "active" and role.start > 0 else stored
            await self._cache.advance_shard_watermark(self.shard.field, position, role.fields)

    def _retire_done(self, role: ShardRole) -> None:
        self.retired = True
        self.prepared_at = time.time()
        log.info(
            "shard handed off",
            extra={"shard": str(self.shard), "handoff": str(role.stop), "slot": self.slot},
        )

    async def _retire(self, conn: psycopg.AsyncConnection[Any], role: ShardRole) -> None:
        """Every transaction before the handoff is applied and the shard's position says so:
        the slot goes (its WAL is no longer kept), and the shards in force stop waiting for
        this one's position. A shard behind puts the configured refresh back: the shards of
        the next plan leave the interval alone."""
        if self.catching_up:
            await self._end_catch_up()
        await drop_slot(conn, self.slot)
        metrics.SHARD_HANDOFFS.inc()
        self._retire_done(role)

    async def step(self) -> StepResult:
        """Peek, apply and advance once; returns what was done."""
        conn = await self._connection()
        if self.retired:
            return StepResult(0, 0, self.watermark, False)
        await self._refill_cache_if_lost(conn)
        started = time.perf_counter()
        started_at = time.time()
        upto, role = await self.shard_state.position_and_role(conn)
        if role.fields != self._fields_seen or len(role.fields) > self.shard.count:
            # A plan changed, or one is handing off: the shards leaving queue recompute jobs
            # for projects this one owns (they run none themselves), and only a job this
            # process queued would make it look for stored jobs again.
            self._fields_seen = role.fields
            self.recompute.pending = True
        if role.stop is not None:
            # A shard handing off applies what commits before the handoff, nothing after.
            upto = min(upto, role.stop)
        batch = self._settings.batch_changes
        queued_jobs = False

        async def apply(group: list[Transaction]) -> None:
            nonlocal queued_jobs
            queued_jobs = await self.apply(group) or queued_jobs

        try:
            async with peek_change_pages(
                await self._peek_connection(),
                self.slot,
                self.publication,
                batch,
                upto,
                page_rows=batch,
            ) as pages:
                read = await read_batch(pages, batch, apply)
            await self.settle_writes()
        except SlotError:
            await self._writing.abandon()
            lost = await slot_lost(conn, self.slot)
            if lost is not None:
                raise SlotLost(self.slot, lost) from None
            raise
        except BaseException:
            await self._writing.abandon()
            raise
        transactions, changes = read.transactions, read.changes
        full = read.rows >= batch
        if queued_jobs:
            # Before the watermark moves: a recompute that fits in one slice is seen by a
            # reader waiting for this batch; a longer one goes on between later batches.
            await self.recompute.run_slice(self._settings.recompute_slice_ms / 1000)
        await self._pace_refresh(full)
        if self.before_advance is not None:
            await self.before_advance(transactions)
        # A batch that did not fill up holds every transaction committed before ``upto``:
        # the slot and the watermark may move to ``upto`` itself (this is the heartbeat).
        target = upto if not full else transactions[-1].end_lsn
        await self._cache.wait_for_replicas()
        await advance_slot(conn, self.slot, target)
        combined = await self._cache.advance_shard_watermark(
            self.shard.field, target, role.fields, only_over_stored=True
        )
        if combined == -1:
            # Redis lost its data after this step's check (a restart): reload it now, at the
            # slot's new position, which also writes the watermark.
            await self._refill_cache_if_lost(conn)
        self.watermark = target
        metrics.WATERMARK.set(int(target))
        if not full:
            self.applied_until = started_at
        elif transactions:
            # The next pending commit is not older than the newest one applied.
            newest = transactions[-1].commit_time.timestamp()
            self.applied_until = max(self.applied_until or newest, newest)
        lag_bytes = max(0, int(upto) - int(target))
        metrics.LAG_BYTES.set(lag_bytes)
        seconds = lag_seconds(lag_bytes, self.applied_until, time.time())
        if seconds is not None:
            metrics.LAG_SECONDS.set(seconds)
        if self.recompute.pending and not queued_jobs:
            # After the watermark moved: the changes of other tenants this batch applied are
            # visible before the slice runs, so a long recompute delays them by one slice,
            # not two.
            await self.recompute.run_slice(self._settings.recompute_slice_ms / 1000)
        if transactions:
            metrics.TRANSACTIONS.inc(len(transactions))
            metrics.BATCH_CHANGES.observe(changes)
            metrics.APPLY_SECONDS.observe(time.perf_counter() - started)
        self.last_step_at = time.time()
        metrics.LAST_STEP_TIMESTAMP.set(self.last_step_at)
        if role.stop is not None and not full and target >= role.stop:
            await self._retire(conn, role)
        return StepResult(len(transactions), changes, target, full)

    async def _pace_refresh(self, full: bool) -> None:
        """Behind by more than a batch (``CATCH_UP_AFTER_FULL_STEPS`` full ones in a row), the
        serving indices refresh every ``LOYALTY_ES_CATCHUP_REFRESH``; the first batch that
        does not fill up puts ``LOYALTY_ES_REFRESH`` back and refreshes, before the watermark
        moves. Lists lag by the backlog anyway meanwhile; each refresh writes a segment that
        merges cost again, which a backlog pays in indexing speed. One shard of several keeps
        the interval: shards behind and shards caught up would undo each other."""
        self._full_steps = self._full_steps + 1 if full else 0
        catch_up = self._settings.es_catchup_refresh_interval
        if catch_up == self._settings.es_refresh_interval or not self.shard.single:
            return
        if not self.catching_up and self._full_steps >= CATCH_UP_AFTER_FULL_STEPS:
            await self._search.set_serving_refresh(catch_up)
            self.catching_up = True
            metrics.CATCHING_UP.set(1)
            log.info("indexer behind, refreshing less often", extra={"interval": catch_up})
        elif self.catching_up and not full:
            await self._end_catch_up()
            log.info(
                "indexer caught up, refreshing as configured",
                extra={"interval": self._settings.es_refresh_interval},
            )

    async def _end_catch_up(self) -> None:
        """The configured refresh interval on the serving indices (also at start: a process
        that stopped while catching up left the longer one), and a refresh."""
        await self._search.set_serving_refresh(None)
        self.catching_up = False
        metrics.CATCHING_UP.set(0)

    async def _refill_cache_if_lost(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Reload Redis from the source when it lost its data (a restart without persistence,
        a flush): objects no change touches again, API keys and the watermark would otherwise
        stay missing for good. Every value is written at the slot's confirmed position: all
        changes before it are in the source read now, and every change still to come has a
        commit LSN at or after it, so it wins as usual. The sign is this shard's position
        (``indexer.shards``) missing: every load and every step writes it; a shard of several
        reloads its own projects."""
        if self.shard.field in await self._cache.store.shard_watermarks():
            return
        role = await self.shard_state.read(conn)
        status = await slot_status(conn, self.slot)
        version = status.confirmed_flush_lsn
        log.warning("cache lost its data, reloading it", extra={"version": str(version)})
        keys = await reload_cache(
            conn,
            self._cache,
            version,
            self._settings.rebuild_chunk_ids,
            None if self.shard.single else self.shard.owns,
        )
        # Recompute jobs in progress were lost with the rest: every auto-update segment is
        # checked again against the index.
        now = self.clock()
        async for segment in self.segment_index.auto_segments():
            if not self.shard.owns(segment.project_id):
                continue
            await self._cache.membership.put_job(
                SegmentJob(segment.project_id, segment.segment_id, int(version), now)
            )
        self.recompute.pending = True
        await self._cache.advance_shard_watermark(self.shard.field, version, role.fields)
        log.info("cache reloaded", extra={"keys": keys, "version": str(version)})

    async def apply(self, transactions: list[Transaction]) -> bool:
        """Apply whole transactions, in commit order, to both sinks; returns whether they
        queued a segment recompute. The last chunk's writes may still be in flight on return
        (``settle_writes`` ends them): the next group is read from the slot, decoded and
        checked for visibility meanwhile."""
        conn = await self._connection()
        for transaction in transactions:
            for change in transaction.changes:
                metrics.CHANGES.labels(change.table).inc()
        touched = touched_by(transactions)
        if not touched:
            return False
        rebuild_conn = await self._rebuild_connection(conn, transactions)
        rebuilder = Rebuilder(
            DocumentSource(rebuild_conn),
            chunk_ids=self._settings.rebuild_chunk_ids,
            indexed_owners=self._search.indexed_owners,
            clock=self._now_us,
        )
        await rebuilder.expand(touched, self._search.ids_of_kind)
        # The previous group's writes end before this group's are built: its chunks read the
        # index (``IndexedOwners``) and may hold the same objects.
        await self.settle_writes()
        queued = False
        # One chunk's writes stay in flight while the next chunk is read and built: the
        # indexer's CPU and the sinks' then overlap. The chunks of one group hold different
        # objects, so their writes commute.
        async for built in rebuilder.writes(touched):
            chunk = built
            if not self.shard.single:
                chunk, foreign = owned_writes(built, self.shard.owns)
                if foreign:
                    metrics.SHARD_FOREIGN_WRITES.inc(foreign)
            await self.settle_writes()
            self._writing.start(self._write_both(conn, chunk))
            if chunk.segment_jobs:
                queued = self.recompute.pending = True
        return queued

    async def settle_writes(self) -> None:
        """Wait for the chunk's writes in flight, if any; their failure is raised here."""
        await self._writing.drain()

    async def _rebuild_connection(
        self, primary: psycopg.AsyncConnection[Any], transactions: list[Transaction]
    ) -> psycopg.AsyncConnection[Any]:
        """Where this batch's documents are rebuilt from: the standby once it replayed the
        batch (``indexer.standby``), else the primary once the batch is visible there."""
        if self._standby is not None:
            standby = await self._standby.connection_for(max(t.end_lsn for t in transactions))
            if standby is not None:
                metrics.REBUILD_READS.labels("standby").inc()
                return standby
        metrics.REBUILD_READS.labels("primary").inc()
        await wait_until_visible(primary, [t.xid for t in transactions])
        return primary

    async def _write_both(self, conn: psycopg.AsyncConnection[Any], chunk: SinkWrites) -> None:
        if log.isEnabledFor(logging.DEBUG):
            # Which shard wrote which project at which version: the sharding tests read it.
            written = sorted(
                {(d.project_id, v) for d, v in chunk.documents}
                | {(r.project_id, r.version) for r in chunk.removed}
            )
            log.debug("shard wrote", extra={"shard": str(self.shard), "writes": written})
        refused, _ = await asyncio.gather(self._write_search(chunk), self._cache.apply(chunk))
        # Before the slot moves past the batch: a crash here replays it, and recording the
        # same rows again changes nothing.
        await self._quarantine.settle(conn, chunk, refused)
        _count_written(chunk)

    async def _write_search(self, chunk: SinkWrites) -> list[RefusedDocument]:
        deletes = [VersionedDelete(r.kind, r.object_id, r.version) for r in chunk.removed]
        result = await self._search.apply(chunk.documents, deletes)
        if result.refused:
            # A document Elasticsearch refuses for good is quarantined, not waited for:
            # holding the slot would stop every tenant's freshness on one row.
            metrics.REJECTED_DOCUMENTS.inc(len(result.refused))
        return result.refused

    async def run(self, stop: asyncio.Event) -> None:
        """Loop until ``stop`` is set; the batch in progress is finished first."""
        try:
            await self._loop(stop)
        finally:
            # Also when cancelled (a shutdown that did not wait for a load): no connection
            # is left to the server to close.
            await self.close()

    async def _loop(self, stop: asyncio.Event) -> None:
        backoff = Backoff()
        state = "starting"
        prepared = False
        self._stop = stop
        while not stop.is_set():
            try:
                if not prepared:
                    await self.prepare()
                    if self.prepared_at is None:
                        continue  # a load stopped by ``stop``: it goes on at the next start
                    prepared = True
                if self.retired:
                    return
                result = await self.step()
                await self._tick_when_due()
            except SlotLost:
                # Not retried: ``prepare`` reports it once and reloads into a new generation.
                prepared = False
                continue
            except RETRYABLE as error:
                cause = type(error).__name__
                metrics.RETRIES.labels(cause).inc()
                if state != "waiting":
                    log.warning("indexer waiting for a dependency", extra={"reason": str(error)})
                    state = "waiting"
                await self._drop_connection()
                await backoff.wait(stop)
                continue
            if state != "running":
                log.info("indexer running", extra={"watermark": str(self.watermark)})
                state = "running"
            backoff.reset()
            if not result.full and result.transactions == 0 and not self.recompute.pending:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self._settings.idle_sleep_ms / 1000)

    async def _tick_when_due(self) -> None:
        now = time.monotonic()
        if now < self._next_tick or self.watermark is None:
            return
        self._next_tick = now + self._settings.segment_tick_seconds
        await self.segment_clock.tick(int(self.watermark))

    async def _drop_connection(self) -> None:
        if self._standby is not None:
            await self._standby.close()
        for conn in (self._conn, self._peek_conn):
            if conn is not None:
                try:
                    await conn.close()
                except Exception:
                    log.debug("closing a broken connection failed", exc_info=True)
        self._conn = self._peek_conn = None


def _count_written(chunk: SinkWrites) -> None:
    """Count the documents and removals of a chunk both sinks applied, by kind."""
    written = Counter(str(document.kind) for document, _version in chunk.documents)
    written.update(str(removed.kind) for removed in chunk.removed)
    for kind, count in written.items():
        metrics.DOCUMENTS_WRITTEN.labels(kind).inc(count)
