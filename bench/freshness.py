"""Freshness: how long after COMMIT a change is visible in Redis and in Elasticsearch.

    python bench/freshness.py                            # 1,000 row changes/s for 60 s
    python bench/freshness.py --rate 2000 --seconds 30
    python bench/freshness.py --profile /tmp/indexer.prof   # the indexer under cProfile

A scratch database is created on the server of ``--dsn``, migrated and seeded (small), and
``indexer run`` is started on it as a child process with its own slot, publication, index
prefix and Redis prefix. A paced load generator then commits realistic changes (voucher
balance and redeemed quantity, customer updates, redemption inserts that also bump their
voucher) at ``--rate`` row changes per second, each one a single statement in autocommit.

Each statement returns ``pg_current_wal_insert_lsn()`` after its rows are written: its commit
record, whose LSN becomes the version of every document the change touches, lies at or after
that position, so a document at a version at least that large shows the change. The commit
time is taken on the client as soon as the statement (and so its commit) returns.

- Redis: the indexer publishes the keys and versions of every batch it writes on
  ``<prefix>inv``; a subscriber resolves a change when its key comes with a version at least
  its position (exact, pushed).
- Elasticsearch: the documents of unresolved changes are read with realtime multi-gets
  (versions only) every ``--es-poll-ms``; the resolution is that interval plus one mget.
- Lag: the oldest commit not yet covered by the indexer's watermark, sampled continuously.

Everything created is removed at the end unless ``--keep`` is given (the indexer's log is
kept when the run fails). ``--help`` lists every option.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import os
import pstats
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis.asyncio as aioredis
from elasticsearch import AsyncElasticsearch
from scratchdb import (
    drop_database,
    dsn_for,
    percentile,
    seed_plan_of,
    seeded_database,
    stop_process,
)

from cache.invalidation import InvalidationListener
from cache.readmodel.codec import decode_watermark
from cache.readmodel.keys import KeyLayout
from cache.records import Invalidation
from cache.types import Lsn, ObjectKind
from indexer.settings import DEFAULT_ES_URL, DEFAULT_PG_ADMIN_DSN, DEFAULT_REDIS_URL

REPO_ROOT = Path(__file__).resolve().parent.parent
# The initial load of the small seed takes seconds; this only bounds a hung start.
READY_SECONDS = 600.0
GOAL_P99_MS = 500.0

# The change mix: (name, share of operations, row changes per operation).
MIX: tuple[tuple[str, float, int], ...] = (
    ("voucher_balance", 0.45, 1),
    ("customer_update", 0.25, 1),
    ("redemption", 0.30, 2),
)

SQL_VOUCHER_BALANCE = """
UPDATE vouchers SET
    redeemed_quantity = redeemed_quantity + 1,
    gift_balance = CASE WHEN gift_balance IS NULL THEN NULL
                        ELSE greatest(gift_balance - %(amount)s, 0) END,
    loyalty_balance = CASE WHEN loyalty_balance IS NULL THEN NULL
                           ELSE greatest(loyalty_balance - %(points)s, 0) END,
    updated_at = now()
WHERE id = %(id)s
RETURNING pg_current_wal_insert_lsn()::text
"""
SQL_CUSTOMER_UPDATE = """
UPDATE customers SET
    metadata = metadata || jsonb_build_object('visits', %(visits)s::int),
    phone = %(phone)s,
    updated_at = now()
WHERE id = %(id)s
RETURNING pg_current_wal_insert_lsn()::text
"""
# One statement, two row changes: the redemption and its voucher's redeemed quantity.
SQL_REDEMPTION = """
WITH r AS (
    INSERT INTO redemptions (id, project_id, voucher_id, customer_id, amount, result)
    SELECT %(rid)s, v.project_id, v.id, %(customer)s, %(amount)s, 'SUCCESS'
    FROM vouchers v WHERE v.id = %(voucher)s
    RETURNING voucher_id
)
UPDATE vouchers SET redeemed_quantity = redeemed_quantity + 1, updated_at = now()
FROM r WHERE vouchers.id = r.voucher_id
RETURNING pg_current_wal_insert_lsn()::text
"""


def log(message: str) -> None:
    print(f"[freshness] {message}", file=sys.stderr, flush=True)


# --- measurements ------------------------------------------------------------------------------


@dataclass(slots=True)
class Change:
    """One committed statement and when each sink showed it."""

    kind: ObjectKind  # the document watched
    project_id: str
    object_id: str
    rows: int
    scheduled: float
    committed: float = 0.0
    position: Lsn = Lsn.ZERO
    redis_at: float | None = None
    es_at: float | None = None


@dataclass
class Tracker:
    """Unresolved changes by Redis key and by Elasticsearch document, kept sorted by
    position so a version resolves every change at or below it in one cut."""

    layout: KeyLayout
    es_prefix: str
    by_key: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    by_doc: dict[tuple[str, str], list[tuple[int, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    changes: list[Change] = field(default_factory=list)
    # Newest version each key was announced with: the indexer may announce a change before
    # the writer's own task has recorded it (the announcement is read on the same loop).
    announced: dict[str, tuple[int, float]] = field(default_factory=dict)
    watermark: int = 0
    max_lag: float = 0.0
    # Positions and commit times in commit order, for the watermark lag.
    _order: list[tuple[int, float]] = field(default_factory=list)

    def add(self, change: Change) -> None:
        index = len(self.changes)
        self.changes.append(change)
        key = self.layout.object_key(change.project_id, change.kind, change.object_id)
        early = self.announced.get(key)
        if early is not None and early[0] >= change.position:
            change.redis_at = early[1]
        else:
            bisect.insort(self.by_key[key], (int(change.position), index))
        doc = (f"{self.es_prefix}{change.kind.value}s", change.object_id)
        bisect.insort(self.by_doc[doc], (int(change.position), index))
        bisect.insort(self._order, (int(change.position), change.committed))

    def redis_seen(self, key: str, version: int, at: float) -> None:
        if version > self.announced.get(key, (-1, 0.0))[0]:
            self.announced[key] = (version, at)
        pending = self.by_key.get(key)
        if not pending:
            return
        cut = bisect.bisect_right(pending, (version, sys.maxsize))
        for _position, index in pending[:cut]:
            self.changes[index].redis_at = at
        del pending[:cut]
        if not pending:
            del self.by_key[key]

    def es_seen(self, doc: tuple[str, str], version: int, at: float) -> None:
        pending = self.by_doc.get(doc)
        if not pending:
            return
        cut = bisect.bisect_right(pending, (version, sys.maxsize))
        for _position, index in pending[:cut]:
            self.changes[index].es_at = at
        del pending[:cut]
        if not pending:
            del self.by_doc[doc]

    def watermark_seen(self, watermark: int) -> None:
        self.watermark = max(self.watermark, watermark)
        cut = bisect.bisect_right(self._order, (self.watermark, float("inf")))
        del self._order[:cut]

    def sample_lag(self, now: float) -> None:
        if self._order:
            oldest = min(committed for _position, committed in self._order[:64])
            self.max_lag = max(self.max_lag, now - oldest)

    @property
    def unresolved(self) -> tuple[int, int]:
        return (
            sum(len(v) for v in self.by_key.values()),
            sum(len(v) for v in self.by_doc.values()),
        )


# --- scratch database and indexer --------------------------------------------------------------


def create_database(args: argparse.Namespace) -> str:
    plan = seed_plan_of(args)
    dsn, report = seeded_database(args.dsn, args.database, plan)
    log(f"seeded {report.total_rows:,} rows in {report.elapsed:.1f}s")
    return dsn


@dataclass(frozen=True)
class Names:
    slot: str
    publication: str
    es_prefix: str
    redis_prefix: str

    @classmethod
    def fresh(cls) -> Names:
        tag = uuid.uuid4().hex[:8]
        return cls(f"fresh_{tag}", f"fresh_{tag}", f"fresh{tag}_", f"fresh{tag}:")


@contextlib.contextmanager
def indexer_process(
    args: argparse.Namespace, dsn: str, names: Names, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    env = dict(os.environ)
    env.update(
        LOYALTY_PG_DSN=dsn,
        LOYALTY_REDIS_URL=args.redis_url,
        LOYALTY_ES_URL=args.es_url,
        LOYALTY_ES_INDEX_PREFIX=names.es_prefix,
        LOYALTY_REDIS_KEY_PREFIX=names.redis_prefix,
        LOYALTY_SLOT_NAME=names.slot,
        LOYALTY_PUBLICATION=names.publication,
        LOYALTY_METRICS_PORT="0",
        PYTHONPATH=str(REPO_ROOT),
    )
    argv = [sys.executable]
    if args.profile:
        argv += ["-m", "cProfile", "-o", str(args.profile)]
    argv += ["-m", "indexer.cli", "run", "--log-level", "INFO"]
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        # SIGTERM: the batch in progress completes and cProfile writes its file.
        stop_process(process)


# --- the load ----------------------------------------------------------------------------------


@dataclass
class Population:
    vouchers: list[tuple[str, str]]  # (id, project_id)
    customers_by_project: dict[str, list[str]]


async def load_population(dsn: str) -> Population:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute("SELECT id, project_id FROM vouchers ORDER BY id")
        vouchers = [(str(i), str(p)) for i, p in await cursor.fetchall()]
        cursor = await conn.execute("SELECT id, project_id FROM customers ORDER BY id")
        customers: dict[str, list[str]] = defaultdict(list)
        for customer_id, project_id in await cursor.fetchall():
            customers[str(project_id)].append(str(customer_id))
    return Population(vouchers, dict(customers))


@dataclass
class Operation:
    name: str
    statement: str
    params: dict[str, Any]
    change: Change


class Generator:
    """Operations in a fixed, seeded sequence, each with its scheduled start time."""

    def __init__(self, population: Population, rate: float, seed: int) -> None:
        self._population = population
        self._rate = rate
        self._rng = random.Random(seed)
        self._names = [name for name, _share, _rows in MIX]
        self._shares = [share for _name, share, _rows in MIX]
        self._rows = {name: rows for name, _share, rows in MIX}
        self._projects = sorted(population.customers_by_project)
        self._sequence = 0

    def operations(self, start: float, seconds: float) -> Iterator[Operation]:
        rows_so_far = 0
        while True:
            scheduled = start + rows_so_far / self._rate
            if scheduled >= start + seconds:
                return
            operation = self._next(scheduled)
            rows_so_far += operation.change.rows
            yield operation

    def _next(self, scheduled: float) -> Operation:
        rng = self._rng
        name = rng.choices(self._names, self._shares)[0]
        rows = self._rows[name]
        self._sequence += 1
        if name == "voucher_balance":
            voucher_id, project_id = rng.choice(self._population.vouchers)
            params: dict[str, Any] = {
                "id": voucher_id, "amount": rng.randint(1, 500), "points": rng.randint(1, 20),
            }
            return Operation(
                name, SQL_VOUCHER_BALANCE, params,
                Change(ObjectKind.VOUCHER, project_id, voucher_id, rows, scheduled),
            )
        if name == "customer_update":
            project_id = rng.choice(self._projects)
            customer_id = rng.choice(self._population.customers_by_project[project_id])
            params = {
                "id": customer_id,
                "visits": rng.randint(0, 10_000),
                "phone": f"+48{rng.randint(100_000_000, 999_999_999)}",
            }
            return Operation(
                name, SQL_CUSTOMER_UPDATE, params,
                Change(ObjectKind.CUSTOMER, project_id, customer_id, rows, scheduled),
            )
        voucher_id, project_id = rng.choice(self._population.vouchers)
        customer_id = rng.choice(self._population.customers_by_project[project_id])
        params = {
            "rid": f"fresh_r{self._sequence}",
            "customer": customer_id,
            "amount": rng.randint(100, 5000),
            "voucher": voucher_id,
        }
        # The customer's summary is recomputed from its redemptions: the derived document.
        return Operation(
            name, SQL_REDEMPTION, params,
            Change(ObjectKind.CUSTOMER, project_id, customer_id, rows, scheduled),
        )


@dataclass
class LoadResult:
    started: float
    ended: float
    rows: int
    statements: int
    slips: list[float]


async def drive_load(
    dsn: str, generator: Generator, tracker: Tracker, seconds: float, connections: int
) -> LoadResult:
    """Start each operation at its scheduled time on the first free connection."""
    queue: asyncio.Queue[Operation | None] = asyncio.Queue(maxsize=connections * 4)
    slips: list[float] = []
    rows = 0

    async def worker() -> None:
        nonlocal rows
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while (operation := await queue.get()) is not None:
                slips.append(time.time() - operation.change.scheduled)
                cursor = await conn.execute(operation.statement, operation.params)
                row = await cursor.fetchone()
                change = operation.change
                # Autocommit: the statement's return is its commit.
                change.committed = time.time()
                if row is None:
                    continue  # the row went away (nothing in this load deletes; defensive)
                change.position = Lsn.parse(row[0])
                rows += change.rows
                tracker.add(change)

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    start = time.time() + 0.2
    for operation in generator.operations(start, seconds):
        delay = operation.change.scheduled - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await queue.put(operation)
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)
    return LoadResult(start, time.time(), rows, len(tracker.changes), slips)


# --- observers ---------------------------------------------------------------------------------


def redis_heard(tracker: Tracker) -> Callable[[Invalidation], None]:
    """The invalidation listener's callback: every key and watermark the indexer announced."""

    def heard(invalidation: Invalidation) -> None:
        at = time.time()
        for key, version in invalidation.entries:
            tracker.redis_seen(key, version, at)
        if invalidation.watermark is not None:
            tracker.watermark_seen(invalidation.watermark)

    return heard


async def watch_elasticsearch(
    client: AsyncElasticsearch, tracker: Tracker, done: asyncio.Event, poll: float
) -> float:
    """Realtime multi-gets (versions only) of the documents with unresolved changes; returns
    the mean time between two polls of the same document."""
    polls = 0
    started = time.monotonic()
    while not done.is_set():
        docs = list(tracker.by_doc)
        for start in range(0, len(docs), 1000):
            part = docs[start : start + 1000]
            response = await client.mget(
                docs=[{"_index": index, "_id": doc_id} for index, doc_id in part],
                source=False,
                realtime=True,
            )
            at = time.time()
            for doc, found in zip(part, response["docs"], strict=True):
                if found.get("found"):
                    tracker.es_seen(doc, int(found["_version"]), at)
        polls += 1
        await asyncio.sleep(poll)
    return (time.monotonic() - started) / max(polls, 1)


async def sample_lag(tracker: Tracker, done: asyncio.Event) -> None:
    while not done.is_set():
        tracker.sample_lag(time.time())
        await asyncio.sleep(0.02)


async def wait_ready(
    redis: aioredis.Redis, layout: KeyLayout, process: subprocess.Popen[bytes], log_path: Path
) -> None:
    """Until the initial load is done: the indexer writes the watermark at its end."""
    deadline = time.monotonic() + READY_SECONDS
    while await redis.get(layout.watermark_key) is None:
        if process.poll() is not None:
            raise SystemExit(f"indexer exited ({process.returncode}), see {log_path}")
        if time.monotonic() > deadline:
            raise SystemExit(f"indexer not ready after {READY_SECONDS:.0f}s, see {log_path}")
        await asyncio.sleep(0.2)


Sinks = tuple[aioredis.Redis, AsyncElasticsearch]


@contextlib.asynccontextmanager
async def sink_clients(args: argparse.Namespace) -> AsyncIterator[Sinks]:
    redis = aioredis.Redis.from_url(args.redis_url)
    elastic = AsyncElasticsearch(args.es_url, request_timeout=30)
    try:
        yield redis, elastic
    finally:
        await redis.aclose()
        await elastic.close()


async def measure(
    args: argparse.Namespace, dsn: str, names: Names, process: subprocess.Popen[bytes],
    log_path: Path,
) -> tuple[Tracker, LoadResult, float]:
    layout = KeyLayout(names.redis_prefix)
    tracker = Tracker(layout, names.es_prefix)
    async with sink_clients(args) as (redis, elastic):
        await wait_ready(redis, layout, process, log_path)
        log("initial load done; starting the load")
        population = await load_population(dsn)
        # The read API's own listener: it follows the indexer's channel, whatever it becomes.
        listener = InvalidationListener(redis, layout)
        listener.add_callback(redis_heard(tracker))
        await listener.start()
        await asyncio.wait_for(listener.connected_event.wait(), timeout=10)
        watermark = await redis.get(layout.watermark_key)
        tracker.watermark = decode_watermark(watermark) if isinstance(watermark, bytes) else 0
        done = asyncio.Event()
        observers = [asyncio.create_task(sample_lag(tracker, done))]
        es_watcher = asyncio.create_task(
            watch_elasticsearch(elastic, tracker, done, args.es_poll_ms / 1000)
        )
        generator = Generator(population, args.rate, args.seed)
        try:
            load = await drive_load(dsn, generator, tracker, args.seconds, args.connections)
            log(f"load done: {load.rows:,} row changes; waiting for both sinks")
            deadline = time.monotonic() + args.drain_seconds
            while tracker.unresolved != (0, 0) and time.monotonic() < deadline:
                if process.poll() is not None:
                    log(f"indexer exited ({process.returncode}), see {log_path}")
                    break
                await asyncio.sleep(0.1)
        finally:
            done.set()
            await asyncio.gather(*observers)
            es_interval = await es_watcher
            await listener.stop()
    return tracker, load, es_interval


# --- report ------------------------------------------------------------------------------------


def latencies_ms(tracker: Tracker, attribute: str) -> list[float]:
    """Commit-to-visible times of the changes a sink showed, sorted."""
    # Seen before the writer noticed its own commit returned counts as no delay at all.
    return sorted(
        max(0.0, seen - change.committed) * 1000
        for change in tracker.changes
        if (seen := getattr(change, attribute)) is not None
    )


def report(
    args: argparse.Namespace, tracker: Tracker, load: LoadResult, es_interval: float
) -> None:
    seconds = load.ended - load.started
    print(f"target      {args.rate:,.0f} row changes/s for {args.seconds:.0f} s "
          f"({args.connections} writer connections)")
    print(f"achieved    {load.rows / seconds:,.1f} row changes/s, "
          f"{load.statements / seconds:,.1f} commits/s "
          f"({load.rows:,} row changes in {load.statements:,} commits, {seconds:.1f} s)")
    slips = sorted(load.slips)
    if slips:
        print(f"start slip  p50 {percentile(slips, 50) * 1000:.1f} ms, "
              f"p99 {percentile(slips, 99) * 1000:.1f} ms, max {slips[-1] * 1000:.1f} ms "
              "(scheduled start to actual start)")
    print(f"{'latency (ms)':<24}{'n':>8}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'unseen':>8}")
    worst_p99 = 0.0
    for label, attribute in (("commit -> redis", "redis_at"), ("commit -> elasticsearch", "es_at")):
        values = latencies_ms(tracker, attribute)
        unseen = len(tracker.changes) - len(values)
        p99 = percentile(values, 99)
        worst_p99 = max(worst_p99, p99) if values else float("inf")
        print(f"{label:<24}{len(values):>8}{percentile(values, 50):>9.1f}"
              f"{percentile(values, 95):>9.1f}{p99:>9.1f}"
              f"{(values[-1] if values else float('nan')):>9.1f}{unseen:>8}")
    print(f"max lag     {tracker.max_lag * 1000:.0f} ms "
          "(age of the oldest commit not yet under the indexer's watermark)")
    print(f"es polling  one realtime mget round every {es_interval * 1000:.0f} ms on average: "
          "the Elasticsearch figures include up to that much")
    verdict = "met" if worst_p99 < GOAL_P99_MS else "NOT met"
    print(f"goal        p99 < {GOAL_P99_MS:.0f} ms in both sinks: {verdict} "
          f"(worst p99 {worst_p99:.1f} ms)")


def print_profile(path: Path, lines: int) -> None:
    stats = pstats.Stats(str(path))
    stats.strip_dirs()
    print(f"\n--- indexer profile ({path}): by internal time ---")
    stats.sort_stats("tottime").print_stats(lines)
    print("--- by cumulative time ---")
    stats.sort_stats("cumulative").print_stats(lines)


async def cleanup_sinks(args: argparse.Namespace, names: Names) -> None:
    async with sink_clients(args) as (redis, elastic):
        await elastic.options(ignore_status=404).indices.delete(
            index=f"{names.es_prefix}*", expand_wildcards="all"
        )
        keys = [key async for key in redis.scan_iter(match=f"{names.redis_prefix}*", count=1000)]
        for start in range(0, len(keys), 1000):
            await redis.delete(*keys[start : start + 1000])


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/freshness.py",
        description="Commit paced row changes and measure when Redis and Elasticsearch show "
        "them: commit->visible latency p50/p95/p99/max per sink, maximum lag, achieved rate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=1000, help="row changes per second")
    parser.add_argument("--seconds", type=float, default=60, help="duration of the load")
    parser.add_argument("--connections", type=int, default=6,
                        help="writer connections the paced load is spread over")
    # Creates and drops the scratch database, and the indexer runs as its owner there.
    parser.add_argument("--dsn",
                        default=os.environ.get("LOYALTY_PG_ADMIN_DSN") or DEFAULT_PG_ADMIN_DSN,
                        help="any database of the Postgres server to use, as the admin")
    parser.add_argument("--database", default="loyalty_bench_freshness",
                        help="scratch database (dropped and created)")
    parser.add_argument("--redis-url", help="Redis the indexer writes and the bench watches",
                        default=os.environ.get("LOYALTY_REDIS_URL") or DEFAULT_REDIS_URL)
    parser.add_argument("--es-url", help="Elasticsearch the indexer writes and the bench reads",
                        default=os.environ.get("LOYALTY_ES_URL") or DEFAULT_ES_URL)
    parser.add_argument("--projects", type=int, default=2, help="seed: projects")
    parser.add_argument("--customers", type=int, default=5_000, help="seed: customers")
    parser.add_argument("--vouchers", type=int, default=20_000, help="seed: vouchers")
    parser.add_argument("--redemptions", type=int, default=10_000, help="seed: redemptions")
    parser.add_argument("--seed", type=int, default=7, help="seed of the data and of the load")
    parser.add_argument("--es-poll-ms", type=float, default=10,
                        help="pause between realtime multi-gets of unresolved documents")
    parser.add_argument("--drain-seconds", type=float, default=120,
                        help="how long to wait after the load for the sinks to show everything")
    parser.add_argument("--profile", type=Path, default=None, metavar="FILE",
                        help="run the indexer under cProfile, write the stats to FILE and print "
                        "the top functions (slows the indexer down)")
    parser.add_argument("--profile-lines", type=int, default=30,
                        help="functions listed per profile table")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch database, slot, indices and keys")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.connections < 1:
        raise SystemExit("--rate and --seconds must be positive, --connections at least 1")
    names = Names.fresh()
    log_path = Path(tempfile.gettempdir()) / f"freshness-indexer-{names.slot}.log"
    log(f"scratch database {args.database}; indexer log {log_path}")
    dsn = create_database(args)
    finished = False
    try:
        with indexer_process(args, dsn, names, log_path) as process:
            tracker, load, es_interval = asyncio.run(
                measure(args, dsn, names, process, log_path)
            )
        report(args, tracker, load, es_interval)
        if args.profile:
            print("note        the indexer ran under cProfile: the latencies above are "
                  "pessimistic")
            print_profile(args.profile, args.profile_lines)
        finished = True
    finally:
        if not args.keep:
            asyncio.run(cleanup_sinks(args, names))
            drop_database(dsn_for(args.dsn, "postgres"), args.database)
            if finished:
                log_path.unlink(missing_ok=True)  # kept when something went wrong
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
