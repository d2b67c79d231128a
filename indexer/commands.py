"""The ``indexer run | status | drop`` sub-commands: wiring settings to clients and loops."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from elasticsearch import AsyncElasticsearch, OrjsonSerializer

from cache.config import es_hosts
from cache.connect import RedisClient, redis_from_url
from cache.errors import StoreError
from cache.logs import configure_logging
from cache.membership import MembershipStore
from cache.readmodel.documents import INDEXED_KINDS
from cache.readmodel.keys import KeyLayout
from cache.replicas import ReplicaFence
from cache.store import CacheStore
from cache.types import Lsn
from indexer.changes import WATCHED_TABLES
from indexer.daemon import run_daemon
from indexer.errors import IndexerError, SourceBug
from indexer.pgoutput import ChangeDecoder
from indexer.quarantine import QuarantineStore
from indexer.reindex_state import CheckpointError, CheckpointStore
from indexer.runner import Indexer
from indexer.settings import ENVIRONMENT_HELP, IndexerSettings, counts_per_kind
from indexer.shard_plans import delete_plans, previous_slots_left, read_plans
from indexer.shards import ShardSpec, role_of, shards_of
from indexer.sinks.elastic import ElasticSink
from indexer.sinks.redis import RedisSink
from indexer.slot import drop_publication, drop_slot, peek_changes, slot_exists, slot_status
from indexer.source import DocumentSource, connect

log = logging.getLogger("indexer")


@dataclass
class Clients:
    search: ElasticSink
    cache: RedisSink
    redis: RedisClient
    elastic: AsyncElasticsearch


@contextlib.asynccontextmanager
async def open_clients(settings: IndexerSettings) -> AsyncIterator[Clients]:
    # orjson for responses too: a recompute page is hundreds of customer sources, and the
    # standard library's decoder was a tenth of its time.
    elastic = AsyncElasticsearch(
        es_hosts(settings.es_url),
        request_timeout=30,
        retry_on_timeout=False,
        serializer=OrjsonSerializer(),
    )
    client = redis_from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    layout = KeyLayout(settings.redis_key_prefix)
    store = CacheStore(client, layout, tombstone_ttl_seconds=settings.tombstone_ttl_seconds)
    membership = MembershipStore(
        client,
        layout,
        tombstone_ttl_seconds=settings.tombstone_ttl_seconds,
        events_max_per_project=settings.segment_events_max,
    )
    try:
        yield Clients(
            ElasticSink(
                elastic,
                settings.es_index_prefix,
                refresh_interval=settings.es_refresh_interval,
                shards=counts_per_kind(settings.es_shards, 1),
                replicas=counts_per_kind(settings.es_replicas, 0),
            ),
            RedisSink(
                store, membership,
                ReplicaFence(
                    client, layout, replicas=settings.redis_min_replicas,
                    timeout_ms=settings.redis_replica_timeout_ms,
                ),
            ),
            client,
            elastic,
        )
    finally:
        await client.aclose()
        await elastic.close()


async def run_until_stopped(settings: IndexerSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # The batch in progress completes (both sinks, then the slot) before the loop ends;
        # a load is cut short (``indexer.daemon``).
        loop.add_signal_handler(signum, stop.set)
    async with open_clients(settings) as clients:
        indexer = Indexer(settings, clients.search, clients.cache)
        code = await run_daemon(settings, indexer, stop)
    log.info("indexer stopped")
    return code


def _run(args: argparse.Namespace, settings: IndexerSettings) -> int:
    configure_logging(args.log_level)
    try:
        import uvloop

        return uvloop.run(run_until_stopped(settings))
    except ImportError:
        return asyncio.run(run_until_stopped(settings))


async def gather_status(settings: IndexerSettings) -> dict[str, Any]:
    spec = ShardSpec.parse(settings.shard)
    slot = spec.slot_name(settings.slot_name)
    out: dict[str, Any] = {
        "slot": slot, "publication": spec.publication_name(settings.publication),
    }
    async with await connect(settings.pg_dsn, autocommit=True) as conn:
        out["shards"] = await _plans_status(conn, settings, spec)
        if await slot_exists(conn, slot):
            status = await slot_status(conn, slot)
            out.update(
                active=status.active,
                confirmed_flush_lsn=str(status.confirmed_flush_lsn),
                wal_lsn=str(status.wal_lsn),
                lag_bytes=status.lag_bytes,
                retained_wal_bytes=status.retained_wal_bytes,
                wal_status=status.wal_status,
            )
        else:
            out["slot_exists"] = False
        rows: dict[str, int] = {}
        source = DocumentSource(conn)
        for table in WATCHED_TABLES:
            rows[table] = await source.row_count(table)
        out["rows"] = rows
        quarantine = QuarantineStore(conn)
        try:
            await quarantine.ensure_ready()
            out["quarantined_rows"] = await quarantine.count()
        except SourceBug:
            out["quarantined_rows"] = None  # not migrated yet, or not readable by this role
        if out.get("lag_bytes"):
            out["lag_seconds"] = await _oldest_pending_age(conn, settings)
    async with open_clients(settings) as clients:
        watermark = await clients.cache.store.get_watermark()
        out["applied_watermark"] = None if watermark is None else str(Lsn(watermark))
        # Each shard's own position; the watermark is the least of those in force.
        positions = await clients.cache.store.shard_watermarks()
        out["shard_positions"] = {name: str(Lsn(lsn)) for name, lsn in sorted(positions.items())}
        documents: dict[str, int] = {}
        for kind in INDEXED_KINDS:
            try:
                documents[kind.value] = await clients.search.count(kind)
            except IndexerError:
                documents[kind.value] = -1
        out["documents"] = documents
        try:
            meta = await clients.search.indices_ready()
        except StoreError:
            meta = None
        # The serving generation's stamp: ``complete``, or ``replaced`` while a reload runs.
        out["indices"] = None if meta is None else {
            key: meta.get(key) for key in ("state", "mapping", "consistent_point")
        }
        # The reindex in progress, as its checkpoint says (None: none).
        reindex_key = KeyLayout(settings.redis_key_prefix).reindex_key
        out["reindex"] = await _checkpoint_status(clients, reindex_key)
    return out


async def _plans_status(
    conn: psycopg.AsyncConnection[Any], settings: IndexerSettings, spec: ShardSpec
) -> dict[str, Any]:
    """The shard plans as this shard sees them (``indexer.shards``): the plan in force, the
    one handing off while its slots exist, and this shard's role."""
    try:
        plans = await read_plans(conn)
    except IndexerError as error:
        return {"error": str(error)}
    out: dict[str, Any] = {"this": str(spec)}
    current = plans[0] if plans else None
    out["in_force"] = f"{current.shards} from {current.handoff}" if current else "1 (no plan)"
    left = await previous_slots_left(conn, plans, settings.slot_name)
    if left:
        out["handing_off"] = f"{plans[1].shards} shard(s), slots left: {', '.join(left)}"
    out["role"] = role_of(spec, plans, "handing_off" in out).state
    return out


async def _checkpoint_status(clients: Clients, key: str) -> dict[str, Any] | None:
    store = CheckpointStore(clients.redis, key)
    try:
        state = await store.load()
    except CheckpointError as error:
        return {"error": str(error)}
    if state is None:
        return None
    return {
        "generation": state.generation,
        "kinds": ",".join(str(kind) for kind in state.kinds),
        "source": str(state.source),
        "phase": str(state.phase),
        "stage": state.stage,
        "rows_done": state.rows_done,
        "resumed": state.resumed,
        "started_at": datetime.fromtimestamp(state.started_at, UTC).isoformat(),
    }


async def _oldest_pending_age(
    conn: psycopg.AsyncConnection[Any], settings: IndexerSettings
) -> float | None:
    """Age of the oldest commit the slot still holds for the indexer (None: none pending)."""
    try:
        spec = ShardSpec.parse(settings.shard)
        rows = await peek_changes(
            conn,
            spec.slot_name(settings.slot_name),
            spec.publication_name(settings.publication),
            1,
        )
    except IndexerError:
        return None  # the indexer holds the slot this instant; the bytes figure stands
    decoder = ChangeDecoder()
    for _lsn, _xid, data in rows:
        transaction = decoder.feed(data)
        if transaction is not None:
            age = datetime.now(UTC) - transaction.commit_time
            return round(max(0.0, age.total_seconds()), 3)
    return None


def _status(args: argparse.Namespace, settings: IndexerSettings) -> int:
    status = asyncio.run(gather_status(settings))
    if args.json:
        print(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode())
        return 0
    for key, value in status.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for sub_key, sub_value in value.items():
                print(f"  {sub_key:<16} {sub_value}")
        else:
            print(f"{key:<20} {value}")
    return 0


async def drop_everything(settings: IndexerSettings) -> list[str]:
    dropped: list[str] = []
    async with await connect(settings.pg_dsn, autocommit=True) as conn:
        # Every shard of the plans in force and handing off (``indexer.shards``) as well.
        specs = {ShardSpec(0, 1)}
        for plan in await read_plans(conn):
            specs.update(shards_of(plan.shards))
        for spec in sorted(specs, key=str):
            if await drop_slot(conn, spec.slot_name(settings.slot_name)):
                dropped.append(f"slot {spec.slot_name(settings.slot_name)}")
    # The publication belongs to the tables' owner (``indexer setup`` made it as the admin).
    async with await connect(settings.pg_admin_dsn, autocommit=True) as conn:
        for spec in sorted(specs, key=str):
            await drop_publication(conn, spec.publication_name(settings.publication))
            dropped.append(f"publication {spec.publication_name(settings.publication)}")
        await delete_plans(conn)
    async with open_clients(settings) as clients:
        await clients.search.drop_indices()
        dropped.append(f"indices {settings.es_index_prefix}*")
    return dropped


def _drop(args: argparse.Namespace, settings: IndexerSettings) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            print("indexer drop: refusing without --yes (no terminal to confirm)", file=sys.stderr)
            return 2
        answer = input(
            f"Drop slot {settings.slot_name}, publication {settings.publication} and indices "
            f"{settings.es_index_prefix}*? [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("indexer drop: nothing dropped", file=sys.stderr)
            return 1
    for item in asyncio.run(drop_everything(settings)):
        print(f"dropped {item}")
    return 0


def add_command(subparsers: Any) -> None:
    epilog = ENVIRONMENT_HELP
    run = subparsers.add_parser(
        "run",
        help="run the indexer daemon",
        description="Capture changes from the slot and apply them to Elasticsearch and Redis. "
        "Creates publication, slot and indices (with an initial load) when absent. "
        "Serves /metrics and /healthz on LOYALTY_METRICS_HOST:LOYALTY_METRICS_PORT. "
        "SIGTERM finishes the current batch, then exits; a load in progress stops after the "
        "chunks in flight and runs again at the next start.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--log-level", default="INFO", help="log level (default: INFO)")
    run.set_defaults(handler=_run)
    status = subparsers.add_parser(
        "status",
        help="show slot, lag, watermark and document counts",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_status)
    drop = subparsers.add_parser(
        "drop",
        help="remove the slot, the publication and the indices",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    drop.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    drop.set_defaults(handler=_drop)
