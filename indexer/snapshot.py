"""Initial load: fill fresh indices and the cache from the slot's exported snapshot.

Creating the slot exports a snapshot of exactly its consistent point. Reading every table
through that snapshot, then streaming from the slot, leaves no gap and no overlap. Every
snapshot document takes the consistent point as its version, so a stream change (always
later) wins over it. Tables are read in primary-key chunks through server-side cursors:
memory stays bounded by one chunk whatever the table size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from typing import Any

import psycopg

from cache.readmodel.indices import MAPPING_VERSION
from cache.records import Envelope, MembershipMode, MembershipUpdate, VersionedWrite
from cache.types import Lsn, ObjectKind
from indexer import metrics
from indexer.progress import Progress
from indexer.quarantine import Quarantine
from indexer.rebuild import Rebuilder, SinkWrites
from indexer.settings import IndexerSettings
from indexer.shard_filter import Owns, owned_writes
from indexer.sinks.elastic import ElasticSink, VersionedDelete
from indexer.sinks.redis import RedisSink
from indexer.slot import drop_slot, slot_exists
from indexer.snapshot_reader import snapshot_source, touched_rows
from indexer.source import DocumentSource
from indexer.throttle import RowThrottle

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
    """Recreate the slot and the indices, load everything; returns the consistent point, or
    None when ``stop`` was set first (the generation stays unfinished: the next start loads
    again, from a new snapshot).

    Rows that cannot become a document are recorded in the quarantine (on ``conn``) at the
    consistent point, like the capture loop's."""
    quarantine = quarantine if quarantine is not None else Quarantine()
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
    serving = await search.create_indices(
        generation,
        {"slot": settings.slot_name, "state": "loading", "mapping": MAPPING_VERSION},
    )
    if not serving:
        # Membership records and counters are rebuilt by the load, silently (no customer
        # entered anything by being loaded); records of customers gone since would stay.
        # With a generation serving, they serve too: the load rewrites each record in place
        # and the records it did not reach are emptied after it (``_retire_memberships``).
        await cache.membership.reset_all()
    show = sys.stderr.isatty() if progress is None else progress
    started = time.perf_counter()
    loaded = 0
    async with snapshot_source(settings.pg_dsn, settings.slot_name) as (point, source):
        rebuilder = Rebuilder(
            source, chunk_ids=settings.snapshot_chunk_rows, emit_events=False
        )
        # Reading and building the next chunk overlaps with writing the previous one;
        # the bounded queue keeps memory at a few chunks whatever the table size.
        queue: asyncio.Queue[SinkWrites | None] = asyncio.Queue(maxsize=2)
        writer = asyncio.create_task(_write_chunks(queue, search, cache, conn, quarantine))
        totals = {table: await source.row_count(table) for table, _ in _TABLES}
        for table, total in totals.items():
            metrics.LOAD_ROWS_EXPECTED.labels(table).set(total)
            metrics.LOAD_ROWS.labels(table).set(0)
        reporter = Progress("initial load", totals, terminal=show, logger=log)
        stopping = stop if stop is not None else asyncio.Event()

        async def pause(seconds: float) -> None:
            # The throttle's sleep ends at ``stop``: a slow load stops as promptly.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=seconds)

        throttle = RowThrottle(settings.load_max_rows_per_second, sleep=pause)
        metrics.LOADING.set(1)
        try:
            for table, kind in _TABLES:
                async for ids in source.primary_key_chunks(
                    f"primary_keys_{table}", settings.snapshot_chunk_rows
                ):
                    if stopping.is_set():
                        break
                    async for chunk in rebuilder.writes(touched_rows(kind, ids, point)):
                        await _put(queue, writer, chunk)
                    loaded += len(ids)
                    reporter(table, len(ids))
                    metrics.LOAD_ROWS.labels(table).set(reporter.done)
                    await throttle.took(len(ids))
            await _put(queue, writer, None)
            await writer
            if stopping.is_set():
                log.info("initial load stopped; it runs again at the next start")
                return None
        finally:
            writer.cancel()
            reporter.close()
            metrics.LOADING.set(0)
    # A load run again (after a crash half way through one, or after ``indexer drop``) finds
    # the earlier load's Redis values: those of objects, codes and keys gone since are older
    # than this load's point and would stay live for ever, as no change will come for them.
    await retire_older_cache_values(cache, point)
    if serving:
        await _retire_memberships(cache, point)
    await search.refresh()
    await search.set_meta(
        {
            "slot": settings.slot_name,
            "state": "complete",
            "consistent_point": str(point),
            "mapping": MAPPING_VERSION,
        }
    )
    # Readers move to the new generation in one alias request, once it is complete.
    await search.switch_to(generation)
    await cache.wait_for_replicas()
    await cache.set_watermark(point)
    elapsed = time.perf_counter() - started
    log.info(
        "initial load complete",
        extra={
            "rows": loaded,
            "seconds": round(elapsed, 2),
            "rows_per_second": round(loaded / elapsed) if elapsed else None,
            "consistent_point": str(point),
        },
    )
    return point


async def _put(
    queue: asyncio.Queue[SinkWrites | None], writer: asyncio.Task[None], item: SinkWrites | None
) -> None:
    """Queue a chunk, surfacing the writer's failure instead of waiting on a full queue."""
    put = asyncio.ensure_future(queue.put(item))
    done, _ = await asyncio.wait({put, writer}, return_when=asyncio.FIRST_COMPLETED)
    if put in done:
        return
    put.cancel()
    writer.result()  # raises the writer's error
    raise RuntimeError("snapshot writer stopped before the end of the snapshot")


async def _write_chunks(
    queue: asyncio.Queue[SinkWrites | None],
    search: ElasticSink,
    cache: RedisSink,
    conn: psycopg.AsyncConnection[Any],
    quarantine: Quarantine,
) -> None:
    while (chunk := await queue.get()) is not None:
        deletes = [VersionedDelete(r.kind, r.object_id, r.version) for r in chunk.removed]
        result, _ = await asyncio.gather(search.apply(chunk.documents, deletes), cache.apply(chunk))
        await quarantine.settle(conn, chunk, result.refused)


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
    conn: psycopg.AsyncConnection[Any],
    cache: RedisSink,
    version: Lsn,
    chunk_ids: int,
    owns: Owns | None = None,
) -> int:
    """Write every object, alias and API key the source holds now into Redis at ``version``
    (Redis only: Elasticsearch keeps what it has); ``owns``: those of a shard's projects.
    Returns the number of keys written."""
    source = DocumentSource(conn)
    rebuilder = Rebuilder(source, chunk_ids=chunk_ids, emit_events=False)
    written = 0
    for table, kind in _TABLES:
        async for ids in source.primary_key_chunks(f"primary_keys_{table}", chunk_ids):
            async for chunk in rebuilder.writes(touched_rows(kind, ids, version)):
                if owns is not None:
                    chunk, _ = owned_writes(chunk, owns)
                written += await cache.apply(chunk)
    return written
