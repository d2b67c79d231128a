"""Initial load: a new slot, and a new generation of the indices and the cache filled from
the source, then streaming from the slot's consistent point ``P``.

The tables are read page by page through a snapshot taken at or after ``P`` (a temporary
slot's), by the loader of ``indexer reindex`` (``indexer.reindex_load``): a change between
``P`` and the snapshot comes again from the slot at its own version, which the newer snapshot
document beats, so there is no gap. The load is checkpointed like a reindex: one killed or
stopped goes on from its last page at the next start, at a newer snapshot. Memory stays at a
few pages whatever the table size.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import replace
from typing import Any

import psycopg

from cache.readmodel.documents import INDEXED_KINDS
from cache.readmodel.indices import MAPPING_VERSION
from cache.readmodel.keys import KeyLayout
from cache.records import Envelope, MembershipMode, MembershipUpdate, VersionedWrite
from cache.types import Lsn, ObjectKind
from indexer import metrics
from indexer.quarantine import Quarantine
from indexer.rebuild import Rebuilder
from indexer.reindex_load import GenerationLoader
from indexer.reindex_state import KIND_ORDER, CheckpointError, CheckpointStore, ReindexState, Source
from indexer.settings import IndexerSettings
from indexer.sinks.elastic import ElasticSink
from indexer.sinks.redis import RedisSink
from indexer.slot import create_slot_with_snapshot, drop_slot, slot_exists, slot_lost, slot_status
from indexer.snapshot_reader import touched_rows
from indexer.source import DocumentSource

log = logging.getLogger(__name__)

_RETIRE_BATCH = 1000

_TABLES: tuple[tuple[str, ObjectKind | None], ...] = (
    ("campaigns", ObjectKind.CAMPAIGN),
    ("segments", ObjectKind.SEGMENT),
    ("vouchers", ObjectKind.VOUCHER),
    ("customers", ObjectKind.CUSTOMER),
    ("api_keys", None),
)


async def initial_load(
    settings: IndexerSettings,
    conn: psycopg.AsyncConnection[Any],
    search: ElasticSink,
    cache: RedisSink,
    *,
    progress: bool | None = None,
    quarantine: Quarantine | None = None,
    stop: asyncio.Event | None = None,
) -> Lsn | None:
    """Create the slot and a new generation of the indices, load everything; returns the
    slot's consistent point, or None when ``stop`` was set first (the load goes on from its
    checkpoint at the next call).

    A load saves a checkpoint after each page both sinks acknowledged (``KeyLayout.load_key``,
    as a reindex does): one killed, or stopped by a signal, goes on where it stopped, as long
    as its slot and its generation are still there. Rows that cannot become a document are
    recorded in the quarantine (on ``conn``), like the capture loop's."""
    checkpoints = CheckpointStore(cache.store.redis, KeyLayout(settings.redis_key_prefix).load_key)
    state = await _resumable(settings, conn, search, checkpoints)
    if state is None:
        state = await _start_load(settings, conn, search, cache, checkpoints)
    else:
        log.info(
            "initial load resumed",
            extra={
                "generation": state.generation,
                "stage": state.stage,
                "rows_done": state.rows_done,
            },
        )
    point = (await slot_status(conn, settings.slot_name)).confirmed_flush_lsn
    started = time.perf_counter()
    loader = GenerationLoader(
        settings,
        search,
        cache,
        checkpoints.save,
        stop=stop if stop is not None else asyncio.Event(),
        terminal=sys.stderr.isatty() if progress is None else progress,
        quarantine=quarantine,
        what="initial load",
    )
    metrics.LOADING.set(1)
    try:
        state = await loader.load(state, settings.load_max_rows_per_second)
    finally:
        metrics.LOADING.set(0)
    if stop is not None and stop.is_set():
        log.info("initial load stopped; it goes on from its checkpoint at the next start")
        return None
    await _load_api_keys(conn, cache, point, settings.snapshot_chunk_rows)
    # A load run again (after ``indexer drop``, or after a lost slot) finds the earlier
    # load's Redis values: those of objects, codes and keys gone since are older than this
    # load's point and would stay live for ever, as no change will come for them. Pages a
    # resumed load read at a later snapshot are newer than the point: kept.
    await retire_older_cache_values(cache, point)
    if state.replaces_serving:
        await _retire_memberships(cache, point)
    await search.end_loading(state.generation, INDEXED_KINDS)
    await search.pinned(state.generation, INDEXED_KINDS).set_meta(
        {
            "slot": settings.slot_name,
            "state": "complete",
            "consistent_point": str(point),
            "mapping": MAPPING_VERSION,
        }
    )
    # Readers move to the new generation in one alias request, once it is complete.
    await search.switch_to(state.generation)
    await cache.set_watermark(point)
    await checkpoints.clear()
    elapsed = time.perf_counter() - started
    log.info(
        "initial load complete",
        extra={
            "rows": loader.rows_read,
            "rows_before_restart": state.rows_done - loader.rows_read,
            "seconds": round(elapsed, 2),
            "rows_per_second": round(loader.rows_read / elapsed) if elapsed else None,
            "consistent_point": str(point),
        },
    )
    return point


async def _resumable(
    settings: IndexerSettings,
    conn: psycopg.AsyncConnection[Any],
    search: ElasticSink,
    checkpoints: CheckpointStore,
) -> ReindexState | None:
    """The checkpoint of a load that can go on: same slot (still there, never advanced: its
    position is the load's point), same mapping, its generation still there."""
    try:
        state = await checkpoints.load()
    except CheckpointError as error:
        log.warning("load checkpoint unreadable, loading again", extra={"reason": str(error)})
        return None
    if (
        state is None
        or state.slot != settings.slot_name
        or state.mapping != MAPPING_VERSION
        or await slot_lost(conn, settings.slot_name) is not None
        or not await search.generation_exists(state.generation, INDEXED_KINDS)
    ):
        return None
    return replace(state, resumed=state.resumed + 1)


async def _start_load(
    settings: IndexerSettings,
    conn: psycopg.AsyncConnection[Any],
    search: ElasticSink,
    cache: RedisSink,
    checkpoints: CheckpointStore,
) -> ReindexState:
    serving_meta = await search.indices_ready()
    if serving_meta is not None:
        # Marked first: a load that dies before its switch must run again on restart, not
        # stream from its new slot into a generation that missed the changes before it.
        await search.set_meta({**serving_meta, "state": "replaced"}, serving=True)
    if await slot_exists(conn, settings.slot_name):
        # A slot without complete indices cannot be trusted: its snapshot is gone.
        await drop_slot(conn, settings.slot_name)
    # Milliseconds: a reload within the second of the previous load gets a name of its own.
    generation = time.time_ns() // 1_000_000
    serving = await search.pinned(generation, INDEXED_KINDS).create_indices(
        generation,
        {"slot": settings.slot_name, "state": "loading", "mapping": MAPPING_VERSION},
        loading=True,
    )
    if not serving:
        # Membership records and counters are rebuilt by the load, silently (no customer
        # entered anything by being loaded); records of customers gone since would stay.
        # With a generation serving, they serve too: the load rewrites each record in place
        # and the records it did not reach are emptied after it (``_retire_memberships``).
        await cache.membership.reset_all()
    # The slot first: the load reads at a snapshot taken after its consistent point, and a
    # change in between comes again from the slot at its own version, which a newer
    # snapshot document beats.
    async with create_slot_with_snapshot(settings.pg_dsn, settings.slot_name) as (point, _):
        log.info("initial load needed", extra={"generation": generation, "point": str(point)})
    state = ReindexState(
        generation=generation,
        kinds=KIND_ORDER,
        source=Source.POSTGRES,
        slot=settings.slot_name,
        started_at=time.time(),
        mapping=MAPPING_VERSION,
        replaces_serving=serving,
    )
    await checkpoints.save(state)
    return state


async def _load_api_keys(
    conn: psycopg.AsyncConnection[Any], cache: RedisSink, point: Lsn, chunk_ids: int
) -> None:
    """API key records (Redis only), as they are now, at the load's point: a change since
    comes from the slot at its own, later version."""
    source = DocumentSource(conn)
    rebuilder = Rebuilder(source, chunk_ids=chunk_ids, emit_events=False)
    async for ids in source.primary_key_chunks("primary_keys_api_keys", chunk_ids):
        async for chunk in rebuilder.writes(touched_rows(None, ids, int(point))):
            await cache.apply(chunk)


async def retire_older_cache_values(cache: RedisSink, point: Lsn) -> int:
    """Tombstone, at ``point``, every object, alias and API key value in Redis older than
    ``point``: a complete load at ``point`` rewrote everything that still exists.

    Versions are read from the envelopes' fixed headers, one pipeline per SCAN page, so a
    fresh load (nothing older) costs a pass over the keyspace and no write. A tombstone
    older than ``point`` is rewritten too, harmlessly: it cannot be told from a live value
    without reading the whole value.
    """
    store = cache.store
    retired = 0
    batch: list[VersionedWrite] = []
    # Written while scanning, a batch at a time, so memory stays bounded by one batch:
    # SCAN still returns every key that existed throughout, and a write adds no key.
    async for key in store.keys_older_than(int(point)):
        batch.append(VersionedWrite(key, Envelope.tombstone(int(point))))
        if len(batch) == _RETIRE_BATCH:
            await store.apply_writes(batch)
            retired += len(batch)
            batch = []
    if batch:
        await store.apply_writes(batch)
        retired += len(batch)
    if retired:
        log.info("retired cache values of an earlier load", extra={"keys": retired})
    return retired


async def _retire_memberships(cache: RedisSink, point: Lsn) -> int:
    """Empty, at ``point`` and silently, every membership record the load did not rewrite
    (its customer is gone): the counters drop them as they would for a deletion."""
    retired = 0
    async for owners in cache.membership.records_older_than(int(point)):
        await cache.membership.apply(
            [
                MembershipUpdate(
                    project_id=project_id,
                    customer_id=customer_id,
                    version=int(point),
                    mode=MembershipMode.REPLACE,
                    segment_ids=(),
                    cause_lsn=int(point),
                    occurred_at_us=time.time_ns() // 1000,
                    emit=False,
                )
                for project_id, customer_id in owners
            ]
        )
        retired += len(owners)
    if retired:
        log.info("retired membership records of an earlier load", extra={"records": retired})
    return retired


async def reload_cache(
    conn: psycopg.AsyncConnection[Any], cache: RedisSink, version: Lsn, chunk_ids: int
) -> int:
    """Write every object, alias and API key the source holds now into Redis at ``version``
    (Redis only: Elasticsearch keeps what it has). Returns the number of keys written."""
    source = DocumentSource(conn)
    rebuilder = Rebuilder(source, chunk_ids=chunk_ids, emit_events=False)
    written = 0
    for table, kind in _TABLES:
        async for ids in source.primary_key_chunks(f"primary_keys_{table}", chunk_ids):
            async for chunk in rebuilder.writes(touched_rows(kind, ids, version)):
                written += await cache.apply(chunk)
    return written
