"""Segment membership at scale: a full recompute, one customer's entry, the clock, a neighbour.

    python bench/segments.py                          # 1,000,000 customers (machine quiet)
    python bench/segments.py --customers 20000        # a quick run
    python bench/segments.py --customers 20000 --keep # leave database, slot, indices, keys

Setup. A scratch database (``--database``) is created on the server of ``--dsn``, migrated
and seeded with ``--customers`` customers in ``--projects`` project(s) (``SeedPlan``; the
figures are taken on the first one, "project A"); the bench then inserts a small second
tenant itself ("project B", ``--tenant-customers`` customers: the seed spreads customers
evenly over its projects) and runs ``CREATE EXTENSION IF NOT EXISTS pg_stat_statements``
there. ``indexer run`` is started as a child process with its own slot, publication,
Elasticsearch prefix and Redis prefix, as the indexer's role of ``--indexer-dsn``
(``loyalty_indexer`` on the local stack, given ``indexer setup``'s grants on the scratch
database, so pg_stat_statements tells its statements from the bench's; as the admin when
that role does not exist, the bench's own statements then being told apart by a comment).
The bench waits for the initial load, measures in the order below, prints every figure
beside its baseline, stops the indexer with SIGTERM and removes everything it created
unless ``--keep`` is given (the indexer's log is kept when the run failed).

1. Full recompute. A new auto-update segment matching about a third of project A
   (``{"metadata.tier": {"conditions": {"$in": ["silver", "platinum"]}}}``: 30% + 5% of the
   seeded tiers) is INSERTed; the time runs from the INSERT's commit until the segment's
   counter (``MembershipStore.count``) equals the true count and no recompute job is
   pending (``MembershipStore.jobs``), both polled every 10 ms. Goal: under 60 s.
   Beside it: (a) the same membership by one SQL query over Postgres, without and with the
   expression index it needs (index build timed too); (b) the previous design's cost,
   every customer of the project rebuilt from Postgres: the ids, then
   ``DocumentSource.rows_by_ids(ObjectKind.CUSTOMER, ...)`` in chunks of 2000 and
   ``customer_document(...)`` with the project's compiled auto-update filters, with no
   write at all (a lower bound of that path); (c) the Elasticsearch floor of any design that
   writes the membership into the customer documents: the members' documents read back in
   pages of 500 (the recompute's page) and written again unchanged, at their own versions
   (``external_gte``), one bulk request of 500 at a time, timed apart (run last, after 3:
   the merging it causes would weigh on the latencies of 2 and 4). Also: entered events
   counted in the project's stream over the recompute time (events/s), and the statements
   the indexer's role ran in the scratch database during the recompute (sum of ``calls`` in
   pg_stat_statements), raw and net of the same count over an idle period of the same
   length right after it, with the statements that moved most.
2. Incremental entry. Once Elasticsearch has merged 1's rewrites (no merge running on the
   customer index, waited for at most 120 s and printed: a recompute rewrites a third of
   the index, and that merging is its cost, as the floor's is), with the indexer idle,
   ``--entries`` customers of project A that are
   not members (bronze or gold) get ``metadata.tier = "silver"``, one autocommit UPDATE
   each, paced at ``--entry-rate``; latency is from the statement's return (its commit) to
   the ``customer.segment.entered`` event of that customer being readable in the stream
   (a blocking XREAD, ``MembershipStore.wait_for_events``, then ``read_events``).
   p50/p99/max; goal p99 < 500 ms.
3. Clock tick. A relative-date segment ``{"created_at": {"conditions": {"$after":
   "-P<N>D"}}}``, N chosen from Postgres quantiles so that about ``--clock-members`` of
   project A are members now. Its creation is a full recompute by the running indexer
   (timed as in 1). Then, in this process, ``SegmentIndex``, ``MembershipStore``,
   ``ElasticSink``, ``SegmentRecompute`` and ``SegmentClock`` are built with an injected
   clock: a first ``tick`` at now (it only schedules), the clock moved forward by an
   interval chosen so that ``--tick-share`` of the customers' ``created_at`` fall between
   the previous bound and the new one, and the second ``tick`` timed (customers touched,
   ``left`` events). Beside it: the same step of the clock done by a full pass instead
   (the clock moved forward once more by the same interval and a clock job for the segment
   run to completion), and the creation's full recompute.
4. Another tenant. Every ``--tenant-interval-ms`` a change is committed to one of project
   B's customers; visibility is from the commit to (a) the customer's Redis object at a
   version at least the statement's ``pg_current_wal_insert_lsn()`` and (b) the applied
   watermark reaching it, both as pushed on the indexer's invalidation channel. p50/p99/max
   while idle (``--tenant-idle-seconds``), then during a second full recompute (a second
   segment with the filter of 1, so that 1's statement count is not mixed with project B's
   rebuilds).

The clock runs last: it moves project A's relative-date membership ahead of the indexer's
own clock. Finally the indexer's peak RSS (``VmHWM``) after the initial load and at the
end, and the highest RSS sampled during each recompute. ``--help`` lists every option.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import os
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
import psycopg
import redis.asyncio as aioredis
from elasticsearch import AsyncElasticsearch
from scratchdb import drop_database, dsn_for, percentile, seeded_database, stop_process

from cache.invalidation import InvalidationListener
from cache.membership import MembershipStore
from cache.readmodel.codec import decode_watermark
from cache.readmodel.indices import Field, IndexNames
from cache.readmodel.keys import KeyLayout
from cache.records import EventCause, Invalidation, SegmentEventType, SegmentJob
from cache.types import Lsn, ObjectKind
from indexer.documents import customer_document
from indexer.recompute import SegmentClock, SegmentRecompute
from indexer.seed_rows import SeedPlan
from indexer.segment_filter import InvalidSegmentFilter, SegmentFilter, compile_filter
from indexer.segment_index import SegmentIndex
from indexer.settings import (
    DEFAULT_ES_URL,
    DEFAULT_PG_ADMIN_DSN,
    DEFAULT_PG_DSN,
    DEFAULT_REDIS_URL,
    IndexerSettings,
)
from indexer.setup import role_of, setup_access
from indexer.sinks.elastic import ElasticSink
from indexer.source import DocumentSource, connect

REPO_ROOT = Path(__file__).resolve().parent.parent
GOAL_RECOMPUTE_SECONDS = 60.0
GOAL_ENTRY_P99_MS = 500.0
# Section 2 starts once the customer index has no merge running, waiting at most this long.
MERGE_WAIT_SECONDS = 120.0
DAY_US = 86_400 * 1_000_000
POLL_SECONDS = 0.01
REBUILD_CHUNK = 2000
FLOOR_PAGE = 500  # SegmentRecompute's page
EVENT_PAGE = 10_000
# Every statement the bench runs on the scratch database carries this comment, so the
# indexer's statements are told apart when it runs as the admin too.
OWN = "/* segbench */ "

TIER_FILTER: dict[str, Any] = {"metadata.tier": {"conditions": {"$in": ["silver", "platinum"]}}}
TIER_VALUES = ("silver", "platinum")
ENTRY_TIER = "silver"
PROJECT_B = "proj_segbench_tenant_b"

SQL_MEMBERS = OWN + (
    "SELECT id FROM customers WHERE project_id = %s AND metadata->>'tier' = ANY(%s)"
)
SQL_TIER_INDEX = OWN + (
    "CREATE INDEX IF NOT EXISTS segbench_customers_tier_idx"
    " ON customers (project_id, (metadata->>'tier'))"
)
SQL_INSERT_SEGMENT = OWN + (
    "INSERT INTO segments (id, project_id, name, type, filter)"
    " VALUES (%s, %s, %s, 'auto-update', %s)"
)
SQL_ENTER = OWN + (
    "UPDATE customers SET metadata = jsonb_set(metadata, '{tier}', to_jsonb(%s::text)),"
    " updated_at = now() WHERE id = %s"
)
SQL_TENANT_CHANGE = OWN + (
    "UPDATE customers SET metadata = metadata || jsonb_build_object('visits', %s::int),"
    " updated_at = now() WHERE id = %s RETURNING pg_current_wal_insert_lsn()::text"
)
SQL_STATEMENTS = OWN + (
    "SELECT s.queryid, min(s.query), sum(s.calls)::bigint FROM pg_stat_statements s"
    " JOIN pg_database d ON d.oid = s.dbid JOIN pg_roles r ON r.oid = s.userid"
    " WHERE d.datname = %s AND r.rolname = %s GROUP BY s.queryid"
)


def log(message: str) -> None:
    print(f"[segments] {message}", file=sys.stderr, flush=True)


def spread(values_ms: Sequence[float]) -> str:
    ordered = sorted(values_ms)
    if not ordered:
        return "no sample"
    return (
        f"p50 {percentile(ordered, 50):7.1f} ms  p99 {percentile(ordered, 99):7.1f} ms  "
        f"max {ordered[-1]:7.1f} ms  (n={len(ordered)})"
    )


def wall_us() -> int:
    return time.time_ns() // 1000


def without_password(dsn: str) -> str:
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    if "password" in parts:
        parts["password"] = "***"
    return psycopg.conninfo.make_conninfo("", **parts)


# --- scratch database, roles, indexer ----------------------------------------------------------


@dataclass(frozen=True)
class Names:
    slot: str
    publication: str
    es_prefix: str
    redis_prefix: str

    @classmethod
    def fresh(cls) -> Names:
        tag = uuid.uuid4().hex[:8]
        return cls(f"segbench_{tag}", f"segbench_{tag}", f"segbench{tag}_", f"segbench{tag}:")


@dataclass(frozen=True)
class Scratch:
    admin_dsn: str  # the scratch database, as the admin
    indexer_dsn: str  # the scratch database, as the role the indexer runs as
    indexer_role: str
    project_a: str
    customers_a: int
    seed_seconds: float


def create_database(args: argparse.Namespace, names: Names) -> Scratch:
    plan = SeedPlan(
        seed=args.seed,
        projects=args.projects,
        customers=args.customers,
        vouchers=args.vouchers,
        redemptions=args.redemptions,
        segments=args.segments,
    )
    dsn, report = seeded_database(args.dsn, args.database, plan)
    log(f"seeded {report.total_rows:,} rows in {report.elapsed:.1f}s")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(OWN + "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute(
            OWN + "INSERT INTO projects (id, name) VALUES (%s, 'Segment bench tenant B')",
            (PROJECT_B,),
        )
        conn.execute(
            OWN + "INSERT INTO customers (id, project_id, source_id, name, email, metadata,"
            " created_at) SELECT 'custb_' || lpad(n::text, 6, '0'), %s, 'crmb-' || n,"
            " 'Tenant B ' || n, 'tenant.b.' || n || '@example.com',"
            " jsonb_build_object('tier', 'bronze', 'visits', 0), now() - n * interval '1 hour'"
            " FROM generate_series(1, %s) n",
            (PROJECT_B, args.tenant_customers),
        )
        conn.execute(OWN + "ANALYZE")
        row = conn.execute(
            OWN + "SELECT id, (SELECT count(*) FROM customers c WHERE c.project_id = p.id)"
            " FROM projects p WHERE id <> %s ORDER BY id LIMIT 1",
            (PROJECT_B,),
        ).fetchone()
        if row is None:
            raise SystemExit("the seed made no project")
        project_a, customers_a = str(row[0]), int(row[1])
        role = role_of(args.indexer_dsn) or ""
        exists = (
            role != ""
            and conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            is not None
        )
        current = conn.execute("SELECT current_user").fetchone()
        admin_role = str(current[0]) if current is not None else ""
    if exists and role != admin_role:
        asyncio.run(_grant(dsn, role, names.publication))
        indexer_dsn = dsn_for(args.indexer_dsn, args.database)
    else:
        if role != admin_role:
            log(f"role {role!r} does not exist: the indexer runs as the admin {admin_role!r}")
        role, indexer_dsn = admin_role, dsn
    return Scratch(dsn, indexer_dsn, role, project_a, customers_a, report.elapsed)


async def _grant(dsn: str, role: str, publication: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for line in await setup_access(conn, role, publication):
            log(f"setup: {line}")


def indexer_argv() -> list[str]:
    return [sys.executable, "-m", "indexer.cli", "run", "--log-level", "INFO"]


def indexer_env(args: argparse.Namespace, scratch: Scratch, names: Names) -> dict[str, str]:
    return {
        "LOYALTY_PG_DSN": scratch.indexer_dsn,
        "LOYALTY_PG_ADMIN_DSN": scratch.admin_dsn,
        "LOYALTY_REDIS_URL": args.redis_url,
        "LOYALTY_ES_URL": args.es_url,
        "LOYALTY_ES_INDEX_PREFIX": names.es_prefix,
        "LOYALTY_REDIS_KEY_PREFIX": names.redis_prefix,
        "LOYALTY_SLOT_NAME": names.slot,
        "LOYALTY_PUBLICATION": names.publication,
        "LOYALTY_METRICS_PORT": "0",
    }


@contextlib.contextmanager
def indexer_process(
    args: argparse.Namespace, scratch: Scratch, names: Names, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    env = dict(os.environ)
    env.update(indexer_env(args, scratch, names), PYTHONPATH=str(REPO_ROOT))
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            indexer_argv(),
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        yield process
    finally:
        # SIGTERM: the batch in progress completes first.
        stop_process(process, timeout=120)


def proc_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB (empty once it is gone)."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0])
    return found


# --- figures -----------------------------------------------------------------------------------


@dataclass
class Waited:
    """A recompute watched from the INSERT's commit."""

    seconds: float | None  # None: not reached before the timeout
    count: int
    jobs: int
    peak_rss_kb: int


@dataclass
class Statements:
    raw: int = 0
    idle: int = 0
    idle_seconds: float = 0.0
    # Calls during the recompute of statements the idle loop never ran (the recompute's own,
    # and the segment's rebuild), and steps counted as calls of the idle loop's most frequent
    # statement (one peek per step).
    others: int = 0
    steps: int = 0
    idle_steps: int = 0
    top: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class FullRecompute:
    members: int = 0
    total: int = 0
    waited: Waited | None = None
    entered: int = 0
    left: int = 0
    sql_seq_seconds: float = 0.0
    sql_index_seconds: float = 0.0
    sql_index_build_seconds: float = 0.0
    sql_plan: str = ""
    old_ids_seconds: float = 0.0
    old_rows_seconds: float = 0.0
    old_documents_seconds: float = 0.0
    old_customers: int = 0
    old_filters: int = 0
    floor_documents: int = 0
    floor_read_seconds: float = 0.0
    floor_write_seconds: float = 0.0
    statements: Statements = field(default_factory=Statements)


@dataclass
class Entries:
    latencies_ms: list[float] = field(default_factory=list)
    asked: int = 0
    unseen: int = 0
    achieved_rate: float = 0.0
    merges_waited: float = 0.0  # for Elasticsearch to finish merging 1's rewrites


@dataclass
class ClockFigures:
    days: int = 0
    members_share: float = 0.0
    creation: Waited | None = None
    creation_expected: tuple[int, int] = (0, 0)
    interval_us: int = 0
    crossing_expected: int = 0
    first_tick_seconds: float = 0.0
    tick_seconds: float = 0.0
    touched: int = 0
    tick_left: int = 0
    members_after: int = 0
    members_after_expected: int = 0
    pass_seconds: float = 0.0
    pass_left: int = 0
    pass_crossing_expected: int = 0


@dataclass
class TenantFigures:
    idle: list[TenantChange] = field(default_factory=list)
    during: list[TenantChange] = field(default_factory=list)
    waited: Waited | None = None
    members: int = 0


@dataclass
class Figures:
    full: FullRecompute = field(default_factory=FullRecompute)
    entries: Entries = field(default_factory=Entries)
    clock: ClockFigures = field(default_factory=ClockFigures)
    tenant: TenantFigures = field(default_factory=TenantFigures)
    load_seconds: float = 0.0
    hwm_after_load_kb: int = 0
    hwm_end_kb: int = 0
    failures: list[str] = field(default_factory=list)


# --- shared helpers ----------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    scratch: Scratch
    names: Names
    process: subprocess.Popen[bytes]
    log_path: Path
    db: psycopg.AsyncConnection[Any]
    redis: aioredis.Redis
    membership: MembershipStore
    waiter: MembershipStore  # its own client: a blocking XREAD holds a connection
    elastic: AsyncElasticsearch
    layout: KeyLayout

    def alive(self) -> None:
        if self.process.poll() is not None:
            raise SystemExit(f"indexer exited ({self.process.returncode}), see {self.log_path}")

    async def one(self, statement: str, params: Sequence[Any] = ()) -> Any:
        cursor = await self.db.execute(statement, params)
        row = await cursor.fetchone()
        return None if row is None else row[0]

    async def insert_segment(self, segment_id: str, name: str, segment_filter: Any) -> float:
        """INSERT an auto-update segment in project A (autocommit); the commit's time."""
        await self.db.execute(
            SQL_INSERT_SEGMENT,
            (segment_id, self.scratch.project_a, name, orjson.dumps(segment_filter).decode()),
        )
        return time.time()

    async def watermark(self) -> int:
        raw = await self.redis.get(self.layout.watermark_key)
        return decode_watermark(raw) if isinstance(raw, bytes) else 0

    async def statement_calls(self) -> dict[Any, tuple[str, int]]:
        cursor = await self.db.execute(
            SQL_STATEMENTS, (self.args.database, self.scratch.indexer_role)
        )
        return {
            queryid: (str(text), int(calls))
            for queryid, text, calls in await cursor.fetchall()
            if OWN.strip() not in str(text)
        }

    async def wait_recompute(
        self, project_id: str, segment_id: str, committed: float, accept: Callable[[int], bool]
    ) -> Waited:
        """Poll the segment's counter and the pending jobs from ``committed`` on, until the
        counter is accepted and no job is pending."""
        deadline = time.monotonic() + self.args.recompute_timeout
        peak = 0
        count, jobs = 0, -1
        next_sample = 0.0
        while time.monotonic() < deadline:
            self.alive()
            now = time.monotonic()
            if now >= next_sample:
                peak = max(peak, proc_memory_kb(self.process.pid).get("VmRSS", 0))
                next_sample = now + 0.1
            count = await self.membership.count(project_id, segment_id)
            if accept(count):
                jobs = len(await self.membership.jobs())
                if jobs == 0:
                    return Waited(time.time() - committed, count, 0, peak)
            await asyncio.sleep(POLL_SECONDS)
        jobs = len(await self.membership.jobs())
        return Waited(None, count, jobs, peak)

    async def count_events(
        self, project_id: str, after: str, segment_id: str, cause: EventCause | None = None
    ) -> Counter[SegmentEventType]:
        counted: Counter[SegmentEventType] = Counter()
        cursor = after
        while events := await self.membership.read_events(project_id, cursor, EVENT_PAGE):
            cursor = events[-1].cursor
            for event in events:
                if event.segment_id == segment_id and (cause is None or event.cause is cause):
                    counted[event.type] += 1
        return counted

    async def cursor_now(self, project_id: str) -> str:
        return await self.membership.last_event_cursor(project_id) or "0-0"


async def wait_ready(bench: Bench) -> float:
    """Until the initial load is done: the indexer writes the watermark at its end."""
    started = time.monotonic()
    deadline = started + bench.args.ready_seconds
    while await bench.redis.get(bench.layout.watermark_key) is None:
        bench.alive()
        if time.monotonic() > deadline:
            raise SystemExit(
                f"indexer not ready after {bench.args.ready_seconds:.0f}s, see {bench.log_path}"
            )
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def timed(awaitable: Awaitable[Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = await awaitable
    return result, time.perf_counter() - started


# --- 1. full recompute -------------------------------------------------------------------------


async def sql_baseline(bench: Bench, out: FullRecompute) -> set[str]:
    params = (bench.scratch.project_a, list(TIER_VALUES))

    async def members() -> set[str]:
        cursor = await bench.db.execute(SQL_MEMBERS, params)
        return {str(row[0]) for row in await cursor.fetchall()}

    _, out.sql_seq_seconds = await timed(members())
    _, out.sql_index_build_seconds = await timed(bench.db.execute(SQL_TIER_INDEX))
    await bench.db.execute(OWN + "ANALYZE customers")
    found, out.sql_index_seconds = await timed(members())
    cursor = await bench.db.execute(
        OWN + "EXPLAIN (FORMAT JSON) " + SQL_MEMBERS[len(OWN) :], params
    )
    plan = await cursor.fetchone()
    if plan is not None:
        top = plan[0][0]["Plan"]
        out.sql_plan = top.get("Node Type", "?")
        if "Plans" in top:
            out.sql_plan += " over " + ", ".join(p.get("Node Type", "?") for p in top["Plans"])
    return cast(set[str], found)


_BUILD_ARITY = len(inspect.signature(customer_document).parameters)


def build_customer(row: Any, filters: list[tuple[str, SegmentFilter]], now_us: int) -> object:
    """``customer_document`` as the rebuild calls it (with or without the evaluation time,
    whichever the current signature takes)."""
    builder = cast(Callable[..., object], customer_document)
    return builder(row, filters, now_us) if _BUILD_ARITY >= 3 else builder(row, filters)


async def old_path_baseline(bench: Bench, out: FullRecompute) -> None:
    """Every customer of project A rebuilt from Postgres as the previous design did on a
    segment's creation, without writing anything."""
    async with await connect(bench.scratch.admin_dsn, autocommit=True) as conn:
        source = DocumentSource(conn)
        started = time.perf_counter()
        cursor = await conn.execute(
            OWN + "SELECT id FROM customers WHERE project_id = %s ORDER BY id",
            (bench.scratch.project_a,),
        )
        ids = [str(row[0]) for row in await cursor.fetchall()]
        filters: list[tuple[str, SegmentFilter]] = []
        for row in await source.auto_segments([bench.scratch.project_a]):
            with contextlib.suppress(InvalidSegmentFilter):
                filters.append((str(row["id"]), compile_filter(row["filter"])))
        out.old_ids_seconds = time.perf_counter() - started
        now_us = wall_us()
        for start in range(0, len(ids), REBUILD_CHUNK):
            rows, seconds = await timed(
                source.rows_by_ids(ObjectKind.CUSTOMER, ids[start : start + REBUILD_CHUNK])
            )
            out.old_rows_seconds += seconds
            built = time.perf_counter()
            for row in rows:
                build_customer(row, filters, now_us)
            out.old_documents_seconds += time.perf_counter() - built
            out.old_customers += len(rows)
        out.old_filters = len(filters)


async def elasticsearch_floor(bench: Bench, out: FullRecompute, segment_id: str) -> None:
    """The members' documents read back and written again unchanged, as a recompute that
    made them all enter would: the cost of the indexing alone. Same versions, same content:
    nothing a reader sees changes, and the indexer never hears of it."""
    alias = IndexNames(bench.names.es_prefix).alias(ObjectKind.CUSTOMER)
    await bench.elastic.indices.refresh(index=alias)
    query = {
        "bool": {
            "filter": [
                {"term": {Field.PROJECT_ID: bench.scratch.project_a}},
                {"term": {Field.SEGMENT_IDS: segment_id}},
            ]
        }
    }
    after: list[Any] | None = None
    while True:
        response, seconds = await timed(
            bench.elastic.search(
                index=alias,
                size=FLOOR_PAGE,
                query=query,
                version=True,
                sort=[{Field.ID: "asc"}],
                search_after=after,
                track_total_hits=False,
            )
        )
        out.floor_read_seconds += seconds
        hits = response["hits"]["hits"]
        if not hits:
            return
        after = hits[-1]["sort"]
        body = bytearray()
        for hit in hits:
            action = {"_index": alias, "_id": hit["_id"], "version": hit["_version"]}
            action["version_type"] = "external_gte"
            body += orjson.dumps({"index": action}) + b"\n"
            body += orjson.dumps(hit["_source"]) + b"\n"
        answer, seconds = await timed(
            bench.elastic.perform_request(
                "POST",
                "/_bulk",
                headers={"content-type": "application/x-ndjson", "accept": "application/json"},
                body=bytes(body),
            )
        )
        out.floor_write_seconds += seconds
        if answer.body.get("errors"):
            raise RuntimeError("the floor's bulk rewrite was refused in part")
        out.floor_documents += len(hits)


async def full_recompute(bench: Bench, out: FullRecompute) -> None:
    project = bench.scratch.project_a
    log("1. full recompute: baselines over Postgres first")
    expected = await sql_baseline(bench, out)
    out.members = len(expected)
    out.total = bench.scratch.customers_a
    after = await bench.cursor_now(project)
    before = await bench.statement_calls()
    log(f"1. INSERT the segment ({out.members:,} of {out.total:,} customers should enter)")
    committed = await bench.insert_segment("seg_segbench_tiers", "Silver or platinum", TIER_FILTER)
    out.waited = await bench.wait_recompute(
        project, "seg_segbench_tiers", committed, lambda count: count == out.members
    )
    ran = await bench.statement_calls()
    window = out.waited.seconds if out.waited.seconds is not None else time.time() - committed
    log(f"1. recompute: {out.waited}; idle statement window of {window:.1f}s")
    idle_before = await bench.statement_calls()
    await asyncio.sleep(window)
    idle_after = await bench.statement_calls()
    moved = {q: calls - before.get(q, ("", 0))[1] for q, (_text, calls) in ran.items()}
    idle = {q: calls - idle_before.get(q, ("", 0))[1] for q, (_t, calls) in idle_after.items()}
    loop = max(idle, key=lambda q: idle[q], default=None)
    out.statements = Statements(
        raw=sum(moved.values()),
        idle=sum(idle.values()),
        idle_seconds=window,
        others=sum(calls for q, calls in moved.items() if not idle.get(q)),
        steps=moved.get(loop, 0) if loop is not None else 0,
        idle_steps=idle.get(loop, 0) if loop is not None else 0,
        top=sorted(
            ((calls, " ".join(ran[q][0].split())) for q, calls in moved.items() if calls),
            reverse=True,
        )[:6],
    )
    counted = await bench.count_events(project, after, "seg_segbench_tiers")
    out.entered = counted[SegmentEventType.ENTERED]
    out.left = counted[SegmentEventType.LEFT]
    log("1. baseline: the previous design's rebuild of every customer (reads only)")
    await old_path_baseline(bench, out)


# --- 2. incremental entry ----------------------------------------------------------------------


async def merges_settled(bench: Bench) -> float:
    """Wait until the customer index has no merge running (at most ``MERGE_WAIT_SECONDS``); returns
    the seconds waited. A recompute rewrites a third of the index, as the floor does, and
    the merging that follows is its cost, not the incremental path's."""
    alias = IndexNames(bench.names.es_prefix).alias(ObjectKind.CUSTOMER)
    started = time.monotonic()
    while time.monotonic() - started < MERGE_WAIT_SECONDS:
        stats = await bench.elastic.indices.stats(index=alias, metric="merge")
        if not stats["_all"]["primaries"]["merges"]["current"]:
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def entries(bench: Bench, out: Entries) -> None:
    project, segment = bench.scratch.project_a, "seg_segbench_tiers"
    out.merges_waited = await merges_settled(bench)
    cursor = await bench.db.execute(
        OWN + "SELECT id FROM customers WHERE project_id = %s"
        " AND metadata->>'tier' IN ('bronze', 'gold') ORDER BY md5(id) LIMIT %s",
        (project, bench.args.entries),
    )
    wanted = [str(row[0]) for row in await cursor.fetchall()]
    out.asked = len(wanted)
    wanted_set = set(wanted)
    committed: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = asyncio.Event()
    position = await bench.cursor_now(project)

    async def read() -> None:
        nonlocal position
        while not done.is_set():
            if not await bench.waiter.wait_for_events(project, position, 200):
                continue
            at = time.time()
            for event in await bench.membership.read_events(project, position, 1000):
                position = event.cursor
                if (
                    event.type is SegmentEventType.ENTERED
                    and event.segment_id == segment
                    and event.customer_id in wanted_set
                ):
                    seen.setdefault(event.customer_id, at)

    reader = asyncio.create_task(read())
    log(f"2. {len(wanted)} customers enter, {bench.args.entry_rate:g}/s")
    try:
        start = time.monotonic() + 0.2
        for n, customer_id in enumerate(wanted):
            delay = start + n / bench.args.entry_rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await bench.db.execute(SQL_ENTER, (ENTRY_TIER, customer_id))
            committed[customer_id] = time.time()  # autocommit: the return is the commit
        out.achieved_rate = len(wanted) / max(1e-9, time.monotonic() - start)
        deadline = time.monotonic() + 30
        while len(seen) < len(wanted) and time.monotonic() < deadline:
            bench.alive()
            await asyncio.sleep(0.05)
    finally:
        done.set()
        await reader
    out.latencies_ms = sorted(
        max(0.0, seen[c] - committed[c]) * 1000 for c in wanted if c in seen and c in committed
    )
    out.unseen = len(wanted) - len(out.latencies_ms)


# --- 4. another tenant -------------------------------------------------------------------------


@dataclass(slots=True)
class TenantChange:
    key: str
    position: int
    committed: float
    object_at: float | None = None
    watermark_at: float | None = None

    def ms(self, attribute: str) -> float | None:
        seen = cast(float | None, getattr(self, attribute))
        return None if seen is None else max(0.0, seen - self.committed) * 1000


@dataclass
class TenantTracker:
    keys: set[str]
    changes: list[TenantChange] = field(default_factory=list)
    pending: list[TenantChange] = field(default_factory=list)
    # Newest version each key was announced with, and the newest watermark: a change may be
    # announced before the writer has read its own statement's answer.
    announced: dict[str, tuple[int, float]] = field(default_factory=dict)
    watermark: tuple[int, float] = (0, 0.0)

    def add(self, change: TenantChange) -> None:
        self.changes.append(change)
        self.pending.append(change)
        self._settle()

    def heard(self, invalidation: Invalidation, at: float) -> None:
        for key, version in invalidation.entries:
            if key in self.keys and version > self.announced.get(key, (-1, 0.0))[0]:
                self.announced[key] = (version, at)
        if invalidation.watermark is not None and invalidation.watermark > self.watermark[0]:
            self.watermark = (invalidation.watermark, at)
        self._settle()

    def _settle(self) -> None:
        for change in self.pending:
            announced = self.announced.get(change.key)
            if change.object_at is None and announced and announced[0] >= change.position:
                change.object_at = announced[1]
            if change.watermark_at is None and self.watermark[0] >= change.position:
                change.watermark_at = self.watermark[1]
        self.pending = [c for c in self.pending if c.object_at is None or c.watermark_at is None]


async def tenant_writer(
    bench: Bench, tracker: TenantTracker, ids: list[str], stop: asyncio.Event
) -> None:
    """A change to one of project B's customers every ``--tenant-interval-ms``."""
    interval = bench.args.tenant_interval_ms / 1000
    async with await psycopg.AsyncConnection.connect(
        bench.scratch.admin_dsn, autocommit=True
    ) as conn:
        start = time.monotonic()
        n = 0
        while not stop.is_set():
            customer_id = ids[n % len(ids)]
            cursor = await conn.execute(SQL_TENANT_CHANGE, (n, customer_id))
            row = await cursor.fetchone()
            committed = time.time()
            if row is not None:
                key = bench.layout.object_key(PROJECT_B, ObjectKind.CUSTOMER, customer_id)
                tracker.add(TenantChange(key, int(Lsn.parse(row[0])), committed))
            n += 1
            delay = start + n * interval - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)


async def drain(bench: Bench, tracker: TenantTracker, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while tracker.pending and time.monotonic() < deadline:
        bench.alive()
        await asyncio.sleep(0.05)


async def another_tenant(bench: Bench, out: TenantFigures, members: int) -> None:
    cursor = await bench.db.execute(
        OWN + "SELECT id FROM customers WHERE project_id = %s ORDER BY id", (PROJECT_B,)
    )
    ids = [str(row[0]) for row in await cursor.fetchall()]
    if not ids:
        raise RuntimeError("project B has no customer (--tenant-customers 0)")
    keys = {bench.layout.object_key(PROJECT_B, ObjectKind.CUSTOMER, i) for i in ids}
    tracker = TenantTracker(keys)
    # The read API's own listener: it follows the indexer's channel, whatever it becomes.
    listener = InvalidationListener(bench.redis, bench.layout)
    listener.add_callback(lambda message: tracker.heard(message, time.time()))
    await listener.start()
    try:
        await asyncio.wait_for(listener.connected_event.wait(), timeout=10)
        log(f"4. project B: a change every {bench.args.tenant_interval_ms:g} ms, idle first")
        stop = asyncio.Event()
        writer = asyncio.create_task(tenant_writer(bench, tracker, ids, stop))
        await asyncio.sleep(bench.args.tenant_idle_seconds)
        stop.set()
        await writer
        await drain(bench, tracker)
        out.idle = list(tracker.changes)
        tracker.changes.clear()
        log("4. project B during a second full recompute of project A")
        stop = asyncio.Event()
        writer = asyncio.create_task(tenant_writer(bench, tracker, ids, stop))
        await asyncio.sleep(1.0)  # the writer runs before the recompute starts
        committed = await bench.insert_segment(
            "seg_segbench_tiers_2", "Silver or platinum, again", TIER_FILTER
        )
        out.members = members
        out.waited = await bench.wait_recompute(
            bench.scratch.project_a,
            "seg_segbench_tiers_2",
            committed,
            lambda count: count == members,
        )
        ended = time.time()
        stop.set()
        await writer
        await drain(bench, tracker)
        out.during = [c for c in tracker.changes if committed <= c.committed <= ended]
    finally:
        await listener.stop()


# --- 3. clock tick -----------------------------------------------------------------------------


async def clock_tick(bench: Bench, out: ClockFigures) -> None:
    project, segment = bench.scratch.project_a, "seg_segbench_recent"
    total = bench.scratch.customers_a
    share = bench.args.clock_members
    quantile_us = await bench.one(
        OWN + "SELECT (extract(epoch FROM percentile_disc(%s) WITHIN GROUP (ORDER BY created_at))"
        " * 1000000)::bigint FROM customers WHERE project_id = %s",
        (1.0 - share, project),
    )
    now = wall_us()
    out.days = max(1, (now - int(quantile_us)) // DAY_US)

    async def members_after(bound_us: int) -> int:
        return int(
            await bench.one(
                OWN + "SELECT count(*) FROM customers WHERE project_id = %s"
                " AND created_at > to_timestamp(%s / 1000000.0)",
                (project, bound_us),
            )
        )

    # The indexer evaluates the filter at its own "now", a little after the INSERT: any
    # count between the bound at the INSERT and the bound some minutes later is right.
    inserted_us = wall_us()
    high = await members_after(inserted_us - out.days * DAY_US)
    low = await members_after(inserted_us + 600 * 1_000_000 - out.days * DAY_US)
    out.creation_expected = (low, high)
    out.members_share = high / max(1, total)
    segment_filter = {"created_at": {"conditions": {"$after": f"-P{out.days}D"}}}
    log(f"3. INSERT the relative-date segment -P{out.days}D ({high:,} members expected)")
    committed = await bench.insert_segment(segment, "Recent customers", segment_filter)
    out.creation = await bench.wait_recompute(
        project, segment, committed, lambda count: low <= count <= high
    )

    # In this process, on an injected clock.
    defaults = IndexerSettings()
    membership = MembershipStore(
        bench.redis,
        bench.layout,
        tombstone_ttl_seconds=defaults.tombstone_ttl_seconds,
        events_max_per_project=defaults.segment_events_max,
    )
    search = ElasticSink(bench.elastic, bench.names.es_prefix)
    index = SegmentIndex(bench.elastic, bench.names.es_prefix)
    clock_now = [wall_us()]

    def clock() -> int:
        return clock_now[0]

    recompute = SegmentRecompute(search, index, membership, clock=clock)
    segment_clock = SegmentClock(search, index, membership, recompute, clock=clock)
    first = clock_now[0]
    bound = first - out.days * DAY_US
    crossing = max(1, round(total * bench.args.tick_share))
    edge = await bench.one(
        OWN + "SELECT (extract(epoch FROM created_at) * 1000000)::bigint FROM customers"
        " WHERE project_id = %s AND created_at > to_timestamp(%s / 1000000.0)"
        " ORDER BY created_at OFFSET %s LIMIT 1",
        (project, bound, crossing - 1),
    )
    if edge is None:
        raise RuntimeError("fewer members than the customers meant to cross: raise --clock-members")
    out.interval_us = int(edge) - bound + 1
    out.crossing_expected = (await members_after(bound)) - (
        await members_after(bound + out.interval_us)
    )
    watermark = await bench.watermark()
    _, out.first_tick_seconds = await timed(segment_clock.tick(watermark))
    after = await bench.cursor_now(project)
    clock_now[0] = first + out.interval_us
    log(
        f"3. tick over {out.interval_us / DAY_US:.2f} days of clock "
        f"({out.crossing_expected:,} customers cross)"
    )
    out.touched, out.tick_seconds = await timed(segment_clock.tick(watermark))
    counted = await bench.count_events(project, after, segment, EventCause.CLOCK)
    out.tick_left = counted[SegmentEventType.LEFT]
    out.members_after = await membership.count(project, segment)
    out.members_after_expected = await members_after(bound + out.interval_us)

    # The same step of the clock again, by a full pass over the segment instead.
    after = await bench.cursor_now(project)
    clock_now[0] = first + 2 * out.interval_us
    out.pass_crossing_expected = (await members_after(bound + out.interval_us)) - (
        await members_after(bound + 2 * out.interval_us)
    )
    log("3. the next step of the clock by a full pass (a clock job run to completion)")
    recompute.add_clock_job(SegmentJob(project, segment, watermark, clock_now[0]))
    started = time.perf_counter()
    while True:
        await recompute.run_slice(5.0)
        if not recompute.pending:
            break
    out.pass_seconds = time.perf_counter() - started
    counted = await bench.count_events(project, after, segment, EventCause.CLOCK)
    out.pass_left = counted[SegmentEventType.LEFT]


# --- the run -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_bench(
    args: argparse.Namespace,
    scratch: Scratch,
    names: Names,
    process: subprocess.Popen[bytes],
    log_path: Path,
) -> AsyncIterator[Bench]:
    defaults = IndexerSettings()
    layout = KeyLayout(names.redis_prefix)
    client = aioredis.Redis.from_url(args.redis_url)
    blocking = aioredis.Redis.from_url(args.redis_url)
    elastic = AsyncElasticsearch(args.es_url, request_timeout=120)
    db = await psycopg.AsyncConnection.connect(scratch.admin_dsn, autocommit=True)

    def store(redis: aioredis.Redis) -> MembershipStore:
        return MembershipStore(
            redis,
            layout,
            tombstone_ttl_seconds=defaults.tombstone_ttl_seconds,
            events_max_per_project=defaults.segment_events_max,
        )

    try:
        yield Bench(
            args,
            scratch,
            names,
            process,
            log_path,
            db,
            client,
            store(client),
            store(blocking),
            elastic,
            layout,
        )
    finally:
        await db.close()
        await client.aclose()
        await blocking.aclose()
        await elastic.close()


async def measure(
    args: argparse.Namespace,
    scratch: Scratch,
    names: Names,
    process: subprocess.Popen[bytes],
    log_path: Path,
) -> Figures:
    figures = Figures()
    async with open_bench(args, scratch, names, process, log_path) as bench:
        log("waiting for the initial load")
        figures.load_seconds = await wait_ready(bench)
        figures.hwm_after_load_kb = proc_memory_kb(process.pid).get("VmHWM", 0)
        log(f"initial load done in {figures.load_seconds:.1f}s")

        async def phase(name: str, run: Awaitable[None]) -> None:
            try:
                await run
            except SystemExit:
                raise
            except Exception as error:
                traceback.print_exc(file=sys.stderr)
                figures.failures.append(f"{name}: {type(error).__name__}: {error}")

        await phase("1. full recompute", full_recompute(bench, figures.full))
        await phase("2. entry latency", entries(bench, figures.entries))
        # The second recompute expects 1's members plus those who entered in 2.
        members = await bench.one(
            OWN + "SELECT count(*) FROM customers WHERE project_id = %s"
            " AND metadata->>'tier' = ANY(%s)",
            (scratch.project_a, list(TIER_VALUES)),
        )
        await phase("4. another tenant", another_tenant(bench, figures.tenant, int(members)))
        await phase("3. clock tick", clock_tick(bench, figures.clock))
        # Last: rewriting a third of the index leaves Elasticsearch merging for a while, which
        # the latencies above must not pay for.
        log("1. baseline: the members' documents rewritten unchanged (the Elasticsearch floor)")
        await phase(
            "1. Elasticsearch floor",
            elasticsearch_floor(bench, figures.full, "seg_segbench_tiers"),
        )
        figures.hwm_end_kb = proc_memory_kb(process.pid).get("VmHWM", 0)
    return figures


# --- report ------------------------------------------------------------------------------------


def waited_text(waited: Waited | None) -> str:
    if waited is None:
        return "not measured"
    if waited.seconds is None:
        return f"NOT reached (counter {waited.count:,}, {waited.jobs} job(s) pending)"
    return f"{waited.seconds:.2f} s"


def recompute_jobs(log_path: Path) -> list[dict[str, Any]]:
    """The indexer's own account of each recompute job (its "segment recompute done" lines):
    the job's time without the wait for the batch that carries the segment's change."""
    done: list[dict[str, Any]] = []
    with contextlib.suppress(OSError):
        for line in log_path.read_text().splitlines():
            if '"segment recompute done"' not in line:
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                done.append(orjson.loads(line))
    return done


def report(
    args: argparse.Namespace, scratch: Scratch, names: Names, figures: Figures, log_path: Path
) -> None:
    env = indexer_env(args, scratch, names)
    env["LOYALTY_PG_DSN"] = without_password(env["LOYALTY_PG_DSN"])
    env["LOYALTY_PG_ADMIN_DSN"] = without_password(env["LOYALTY_PG_ADMIN_DSN"])
    print(f"command      {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        "indexer      "
        + " ".join(f"{k}={v}" for k, v in env.items())
        + " "
        + " ".join(["python3", *indexer_argv()[1:]])
    )
    print(
        f"data         project A {scratch.project_a}: {scratch.customers_a:,} customers "
        f"(seeded in {scratch.seed_seconds:.1f} s); project B: {args.tenant_customers:,}; "
        f"initial load {figures.load_seconds:.1f} s; indexer role {scratch.indexer_role}"
    )

    full = figures.full
    print(f"\n1. full recompute of a new auto-update segment {orjson.dumps(TIER_FILTER).decode()}")
    share = full.members / max(1, full.total)
    print(f"   members            {full.members:,} of {full.total:,} ({share:.1%})")
    waited = full.waited
    verdict = ""
    if waited is not None and waited.seconds is not None:
        verdict = "met" if waited.seconds < GOAL_RECOMPUTE_SECONDS else "NOT met"
        verdict = f"   goal < {GOAL_RECOMPUTE_SECONDS:.0f} s: {verdict}"
    print(
        f"   recompute          {waited_text(waited)} from the INSERT's commit to the "
        f"counter right and no job pending{verdict}"
    )
    if waited is not None and waited.seconds:
        print(
            f"   events             {full.entered:,} entered, {full.left:,} left: "
            f"{full.entered / waited.seconds:,.0f} entered events/s"
        )
        print(
            f"   indexer RSS        {waited.peak_rss_kb / 1024:,.0f} MB at most (sampled "
            "every 100 ms during the recompute)"
        )
    print(
        f"   (a) one SQL query  {full.sql_index_seconds:.3f} s with an index on "
        f"(project_id, metadata->>'tier') ({full.sql_plan}; index built in "
        f"{full.sql_index_build_seconds:.2f} s), {full.sql_seq_seconds:.3f} s before it"
    )
    old_total = full.old_ids_seconds + full.old_rows_seconds + full.old_documents_seconds
    print(
        f"   (b) previous path  {old_total:.2f} s to rebuild {full.old_customers:,} customers "
        f"from Postgres with {full.old_filters} auto-update filter(s), no write (lower bound): "
        f"ids {full.old_ids_seconds:.2f} s, rows_by_ids {full.old_rows_seconds:.2f} s, "
        f"customer_document {full.old_documents_seconds:.2f} s"
    )
    if full.floor_documents:
        floor = full.floor_read_seconds + full.floor_write_seconds
        print(
            f"   (c) ES floor       {floor:.2f} s to read and rewrite the {full.floor_documents:,} "
            f"members' documents unchanged, pages of {FLOOR_PAGE}, one request at a time: "
            f"reads {full.floor_read_seconds:.2f} s, bulk writes {full.floor_write_seconds:.2f} s "
            f"({full.floor_documents / full.floor_write_seconds:,.0f} documents/s)"
        )
    st = full.statements
    print(
        f"   postgres           {st.raw:,} statements by the indexer during the recompute; "
        f"{st.idle:,} in an idle period of the same length ({st.idle_seconds:.1f} s); "
        f"net {st.raw - st.idle:+,}"
    )
    if st.steps and waited is not None and waited.seconds:
        print(
            f"                      {st.others:,} of them of kinds the idle loop never runs; "
            f"{st.steps:,} steps during the recompute (one per "
            f"{waited.seconds / st.steps * 1000:,.0f} ms, the slice included) against "
            f"{st.idle_steps:,} idle ones"
        )
    for calls, text in st.top:
        print(f"       {calls:>8,}  {text[:110]}")

    entry = figures.entries
    print(
        f"\n2. incremental entry: {entry.asked} customers set to tier {ENTRY_TIER!r}, one "
        f"autocommit UPDATE each at {entry.achieved_rate:.1f}/s, indexer idle (started once "
        f"Elasticsearch finished merging 1's rewrites: {entry.merges_waited:.1f} s)"
    )
    p99 = percentile(entry.latencies_ms, 99)
    goal = (
        "met"
        if entry.latencies_ms and not entry.unseen and p99 < GOAL_ENTRY_P99_MS
        else ("NOT met")
    )
    print(
        f"   commit -> entered event in the stream: {spread(entry.latencies_ms)}; "
        f"unseen {entry.unseen}   goal p99 < {GOAL_ENTRY_P99_MS:.0f} ms: {goal}"
    )

    clock = figures.clock
    print(
        f"\n3. clock tick: segment created_at $after -P{clock.days}D "
        f"({clock.members_share:.1%} of project A at its creation)"
    )
    interval_days = clock.interval_us / DAY_US
    print(
        f"   tick               {clock.touched:,} customers touched, {clock.tick_left:,} left "
        f"(Postgres: {clock.crossing_expected:,} cross) in {clock.tick_seconds:.3f} s; "
        f"clock step {interval_days:.2f} days; first tick (schedules only) "
        f"{clock.first_tick_seconds:.3f} s"
    )
    print(
        f"   members after      {clock.members_after:,} (Postgres: "
        f"{clock.members_after_expected:,})"
    )
    print(
        f"   full pass instead  {clock.pass_seconds:.2f} s for the next step of the clock "
        f"({clock.pass_left:,} left; Postgres: {clock.pass_crossing_expected:,} cross)"
    )
    low, high = clock.creation_expected
    print(
        f"   full recompute     {waited_text(clock.creation)} on the segment's creation "
        f"({high:,} members expected, {low:,} at least)"
    )

    tenant = figures.tenant
    print(
        f"\n4. another tenant: a change to one of project B's customers every "
        f"{args.tenant_interval_ms:g} ms; visibility from the commit"
    )
    for label, changes in (("idle", tenant.idle), ("during recompute", tenant.during)):
        for what, attribute in (("redis object", "object_at"), ("watermark", "watermark_at")):
            values = [v for c in changes if (v := c.ms(attribute)) is not None]
            unseen = len(changes) - len(values)
            print(f"   {label:<17}{what:<14}{spread(values)}; unseen {unseen}")
    print(
        f"   the recompute      {waited_text(tenant.waited)} ({tenant.members:,} members), "
        "the same filter as 1 with project B's changes flowing"
    )

    print("\nrecompute jobs as the indexer logged them (job start to done):")
    for job in recompute_jobs(log_path):
        print(
            f"   {job.get('segment_id', '?'):<24}examined {job.get('examined', 0):>9,}  "
            f"changed {job.get('changed', 0):>9,}  {job.get('seconds', 0.0):8.2f} s"
        )
    print(
        f"\nindexer peak RSS  {figures.hwm_end_kb / 1024:,.0f} MB (VmHWM; "
        f"{figures.hwm_after_load_kb / 1024:,.0f} MB right after the initial load)"
    )
    for failure in figures.failures:
        print(f"FAILED      {failure}")


async def cleanup_sinks(args: argparse.Namespace, names: Names) -> None:
    client = aioredis.Redis.from_url(args.redis_url)
    elastic = AsyncElasticsearch(args.es_url, request_timeout=120)
    try:
        await elastic.options(ignore_status=404).indices.delete(
            index=f"{names.es_prefix}*", expand_wildcards="all"
        )
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{names.redis_prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()
        await elastic.close()


# --- main --------------------------------------------------------------------------------------


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/segments.py", description=__doc__, formatter_class=_Help
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--customers",
        type=int,
        default=1_000_000,
        help="seed: customers, spread over --projects (figures on the first)",
    )
    data.add_argument("--projects", type=int, default=1, help="seed: projects")
    data.add_argument("--vouchers", type=int, default=20_000, help="seed: vouchers")
    data.add_argument("--redemptions", type=int, default=20_000, help="seed: redemptions")
    data.add_argument(
        "--segments",
        type=int,
        default=8,
        help="seed: segments (alternately static and auto-update)",
    )
    data.add_argument("--seed", type=int, default=7, help="seed of the data")
    data.add_argument(
        "--tenant-customers",
        type=int,
        default=200,
        help="customers of the second project (4), inserted by the bench",
    )
    runs = parser.add_argument_group("measurements")
    runs.add_argument(
        "--entries", type=int, default=300, help="2: customers made to enter the segment"
    )
    runs.add_argument(
        "--entry-rate", type=float, default=20.0, help="2: entering UPDATEs per second"
    )
    runs.add_argument(
        "--clock-members",
        type=float,
        default=0.35,
        help="3: share of project A inside the relative-date segment",
    )
    runs.add_argument(
        "--tick-share",
        type=float,
        default=0.01,
        help="3: share of project A crossing the bound between two ticks",
    )
    runs.add_argument(
        "--tenant-interval-ms",
        type=float,
        default=100,
        help="4: pause between two changes to project B",
    )
    runs.add_argument(
        "--tenant-idle-seconds",
        type=float,
        default=10,
        help="4: how long project B's changes are measured with nothing else",
    )
    runs.add_argument(
        "--recompute-timeout",
        type=float,
        default=900,
        help="give up waiting for a recompute after this many seconds",
    )
    runs.add_argument(
        "--ready-seconds",
        type=float,
        default=7200,
        help="give up waiting for the initial load after this many seconds",
    )
    where = parser.add_argument_group("services")
    where.add_argument(
        "--dsn",
        default=os.environ.get("LOYALTY_PG_ADMIN_DSN") or DEFAULT_PG_ADMIN_DSN,
        help="any database of the Postgres server, as the admin (creates and "
        "drops the scratch database)",
    )
    where.add_argument(
        "--indexer-dsn",
        default=os.environ.get("LOYALTY_PG_DSN") or DEFAULT_PG_DSN,
        help="the indexer's role and password (its database is replaced by "
        "the scratch one); the admin is used when that role does not exist",
    )
    where.add_argument(
        "--database", default="segbench", help="scratch database (dropped and created)"
    )
    where.add_argument(
        "--redis-url",
        default=os.environ.get("LOYALTY_REDIS_URL") or DEFAULT_REDIS_URL,
        help="Redis the indexer writes",
    )
    where.add_argument(
        "--es-url",
        default=os.environ.get("LOYALTY_ES_URL") or DEFAULT_ES_URL,
        help="Elasticsearch the indexer writes",
    )
    where.add_argument(
        "--keep", action="store_true", help="keep the scratch database, slot, indices and keys"
    )
    args = parser.parse_args(argv)
    if args.customers < 100 or args.projects < 1 or args.tenant_customers < 1:
        parser.error("--customers at least 100, --projects and --tenant-customers at least 1")
    if not 0 < args.tick_share < args.clock_members < 1:
        parser.error("0 < --tick-share < --clock-members < 1")
    if args.entries < 1 or args.entry_rate <= 0 or args.tenant_interval_ms <= 0:
        parser.error("--entries, --entry-rate and --tenant-interval-ms must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = Names.fresh()
    log_path = Path(tempfile.gettempdir()) / f"segments-indexer-{names.slot}.log"
    log(f"scratch database {args.database}; indexer log {log_path}")
    finished = False
    try:
        scratch = create_database(args, names)
        with indexer_process(args, scratch, names, log_path) as process:
            figures = asyncio.run(measure(args, scratch, names, process, log_path))
        report(args, scratch, names, figures, log_path)
        finished = not figures.failures
    finally:
        if not args.keep:
            asyncio.run(cleanup_sinks(args, names))
            drop_database(dsn_for(args.dsn, "postgres"), args.database)
            if finished:
                log_path.unlink(missing_ok=True)  # kept when something went wrong
    return 0 if finished else 1


if __name__ == "__main__":
    raise SystemExit(main())
