"""Write bursts: a tenant's batch import committed as fast as Postgres takes it while a reader
loads the API. How long until the whole batch is visible, what the reads see meanwhile, and
how many Postgres blocks the indexer reads per changed row.

    PYTHONPATH=. python3 bench/burst.py     # 200,000 customers + 200,000 redemptions
    PYTHONPATH=. python3 bench/burst.py --customers 5000 --vouchers 10000 \\
        --customers-batch 20000 --redemptions-batch 20000 --before 5 --after 5   # quick

Setup. A scratch database (``--database``) is created on the server of ``--dsn``, migrated
and seeded (``SeedPlan``: ``--customers``, ``--vouchers``, ``--redemptions`` over
``--projects``); ``CREATE EXTENSION IF NOT EXISTS pg_stat_statements`` runs in it (the server
preloads the library). A benchmark key without a rate limit is made for the first project
("the tenant"), the one the batch is imported into and the reader reads. ``indexer run``
starts as a child process with its own slot, publication, index prefix and Redis prefix, as
the role of ``--indexer-dsn`` (``loyalty_indexer`` on the local stack, given ``indexer
setup``'s grants on the scratch database) so that pg_stat_statements tells its statements from
the writer's; as the admin when that role does not exist (the bench's own statements are then
told apart by a leading comment). Once its watermark passes the WAL position read after the
setup, ``readapi serve --workers 1`` starts.

Method.

1. The reader is a separate process (asyncio, aiohttp, uvloop): an open loop at
   ``--read-rate`` requests/s, each request sent at its planned time whatever the previous
   ones are doing (up to ``--read-connections`` at once), its latency taken from the planned
   time, so queueing in the client counts. Half voucher lookups by code, half customer
   lookups by id, drawn from ``--read-sample`` random vouchers and customers of the tenant's
   base population; once the batch is visible, a quarter of the lookups are of the batch's
   new customers instead (cold objects). Every request's planned time, start slip, latency
   and status go to a file the bench reads at the end.
2. After ``--warmup`` s (connections opened, not counted) and ``--before`` s of reading
   alone, ``pg_stat_statements`` is reset for the scratch database only (other databases'
   entries are left alone), ``pg_stat_database`` and ``pg_statio_user_tables`` are read, and
   the writer commits the batch on one connection, as fast as Postgres takes it:
   ``--customers-batch`` new customers (COPY) and ``--redemptions-batch`` redemptions (COPY,
   then one UPDATE that adds each redeemed voucher's successful redemptions to its
   ``redeemed_quantity`` and takes their amounts and points off its balances, as a real
   redemption does), in transactions of ``--tx-rows`` inserted rows, customers and
   redemptions interleaved (``--order``). A redemption names a voucher of the tenant and,
   half the time, a customer of the batch already committed (else an existing one, or none).
   Each transaction's BEGIN and COMMIT times and ``pg_current_wal_lsn()`` right after its
   COMMIT are recorded.
3. Every 0.25 s the indexer's lag is sampled: the age of the oldest commit of the batch
   whose LSN the watermark (Redis) has not reached, and the WAL bytes between the server's
   ``pg_current_wal_lsn()`` and the watermark (server-wide: other databases' writes count).
4. The whole batch is visible when the watermark reaches the LSN read after the last
   COMMIT (polled every 20 ms). The watermark is published once both sinks acknowledged every
   change up to it; that LSN lies at or after the last commit record, so the time errs late
   by at most one heartbeat step of the indexer. It is confirmed through the API at once:
   ``--check-sample`` of the batch's customers must answer 200 with their e-mail and the
   number of their redemptions, and as many redeemed vouchers with their
   ``redeemed_quantity``, as Postgres has them.
5. Changed rows = customers + redemptions inserted + vouchers updated. Catch-up rows/s =
   changed rows / (visible - the first BEGIN); the writer's rows/s = changed rows / (last
   COMMIT - first BEGIN), its row generation included.
6. 1.5 s after visibility (Postgres flushes a backend's table and database counters at most
   once a second), ``pg_stat_statements`` (the indexer's role in the scratch database:
   ``shared_blks_read``, ``shared_blks_hit``), ``pg_stat_database`` (``blks_read``,
   ``blks_hit`` of the whole database: the writer's too) and ``pg_statio_user_tables`` are
   read again; the differences are divided by the changed rows.
7. Reading goes on for ``--after`` s, then stops. Reads are split by planned time into
   before (``--before`` s before the first BEGIN), during (first BEGIN to visible) and after
   (``--after`` s from visible): requests/s, p50, p99, max, non-2xx (no answer counts as
   non-2xx) and the client's start slip p99.

Prints a table with the goals (catch-up >= 20,000 rows/s; read p99 during < 3 x p99 before),
where the catch-up's time went (CPU seconds of the indexer, the API, the reader and the bench
from ``/proc``, of Elasticsearch from its node stats, of the whole machine; Elasticsearch's
indexing operations and time per index, and its refreshes, merges, realtime gets and
searches over all of them), the indexer's statements that touched most blocks,
and draws ``bench/out/burst.png``: the
indexer's lag over time (top) and the read p99 and p50 per second (bottom), the writer's
interval shaded and the visibility marked. The figures go to ``bench/out/burst.json``, the
indexer's and the API's logs to ``bench/out/burst-*.log``. Needs the local stack
(``python -m stack.cli up``) and matplotlib (the ``bench`` extra). The subprocesses are
stopped and the scratch database (with its slot and publication), the indices (``bburst_*``)
and the Redis keys (``bburst:*``) removed at the end, also after an error, Ctrl-C or SIGTERM,
unless ``--keep``. ``--help`` lists every option with its default.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import redis.asyncio as aioredis
from elasticsearch import AsyncElasticsearch
from scratchdb import (
    Children,
    bench_env,
    clean_sinks,
    drop_database,
    dsn_for,
    free_port,
    log,
    percentile,
    plot_reads_per_second,
    seed_plan_of,
    seeded_database,
    tail,
    unwind_on_sigterm,
    wait_api_ready,
)

from cache.config import es_hosts
from cache.readmodel.documents import INDEXED_KINDS
from cache.readmodel.indices import IndexNames
from cache.readmodel.keys import KeyLayout
from cache.store import CacheStore
from indexer.seed_rows import SeedPlan
from indexer.seed_vocabulary import CITIES, DOMAINS, FIRST_NAMES, LAST_NAMES, TIER_WEIGHTS, TIERS
from indexer.settings import IndexerSettings
from indexer.setup import role_of, setup_database

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT = REPO_ROOT / "bench" / "out"
ES_PREFIX = "bburst_"
REDIS_PREFIX = "bburst:"
SLOT = "bburst_slot"
PUBLICATION = "bburst_pub"
APP_ID = "bburst_app"
TOKEN = "bburst-token-not-secret"
# api_keys.rate_limit_per_minute is an int: the largest, so the reader is never throttled.
NO_LIMIT = 2**31 - 1
GOAL_CATCHUP_ROWS_PER_SECOND = 20_000
GOAL_P99_RATIO = 3.0
LAG_SAMPLE_SECONDS = 0.25
VISIBLE_POLL_SECONDS = 0.02
# A backend flushes its table and database counters at most once a second.
STATS_SETTLE_SECONDS = 1.5
# Every statement of the bench carries it: with the indexer running as the admin, this is how
# its statements are told from the writer's in pg_stat_statements.
OWN = "/* burst */ "
CUSTOMERS = "customers"
REDEMPTIONS = "redemptions"
# Reader request kinds, in the order of the file's kind column.
READ_KINDS = ("voucher", "customer", "batch customer")

SQL_COPY_CUSTOMERS = OWN + (
    "COPY customers (id, project_id, source_id, name, email, phone, address, metadata) FROM STDIN"
)
SQL_COPY_REDEMPTIONS = OWN + (
    "COPY redemptions (id, project_id, voucher_id, customer_id, amount, points, result) FROM STDIN"
)
# One row per voucher redeemed in the transaction: what its successful redemptions add up to.
SQL_BUMP_VOUCHERS = OWN + (
    "UPDATE vouchers v SET redeemed_quantity = v.redeemed_quantity + b.redeemed,"
    " gift_balance = CASE WHEN v.gift_balance IS NULL THEN NULL"
    " ELSE greatest(v.gift_balance - b.amount, 0) END,"
    " loyalty_balance = CASE WHEN v.loyalty_balance IS NULL THEN NULL"
    " ELSE greatest(v.loyalty_balance - b.points, 0) END,"
    " updated_at = now()"
    " FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::bigint[])"
    " AS b(id, redeemed, amount, points)"
    " WHERE v.id = b.id"
)
SQL_WAL_LSN = OWN + "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"
SQL_DATABASE_STATS = OWN + (
    "SELECT blks_read, blks_hit, xact_commit, tup_inserted, tup_updated, tup_fetched"
    " FROM pg_stat_database WHERE datname = current_database()"
)
DATABASE_STATS = (
    "blks_read",
    "blks_hit",
    "xact_commit",
    "tup_inserted",
    "tup_updated",
    "tup_fetched",
)
SQL_TABLE_STATS = OWN + (
    "SELECT schemaname || '.' || relname, coalesce(heap_blks_read, 0), coalesce(heap_blks_hit, 0),"
    " coalesce(idx_blks_read, 0), coalesce(idx_blks_hit, 0) FROM pg_statio_user_tables"
)
SQL_RESET_STATEMENTS = OWN + (
    "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database"
    " WHERE datname = current_database()), 0)"
)
# The indexer's statements: its role's in this database, less the bench's own (marked).
SQL_STATEMENTS = OWN + (
    "SELECT s.query, s.calls, s.shared_blks_read, s.shared_blks_hit, s.total_exec_time"
    " FROM pg_stat_statements s"
    " JOIN pg_database d ON d.oid = s.dbid JOIN pg_roles r ON r.oid = s.userid"
    " WHERE d.datname = current_database() AND r.rolname = %s AND s.query NOT LIKE %s"
)


# --- the scratch data ---------------------------------------------------------------------


@dataclass(frozen=True)
class Voucher:
    id: str
    code: str
    type: str


@dataclass
class Tenant:
    """The project the key reads and the batch is imported into, with its base population."""

    project_id: str
    vouchers: list[Voucher]
    customer_ids: list[str]


@dataclass(frozen=True)
class Scratch:
    admin_dsn: str  # the scratch database, as the admin
    indexer_dsn: str  # the scratch database, as the role the indexer runs as
    indexer_role: str
    tenant: Tenant
    statements_available: bool  # pg_stat_statements answers in the scratch database


def env_for(scratch: Scratch) -> dict[str, str]:
    env = bench_env(
        scratch.admin_dsn,
        es_prefix=ES_PREFIX,
        redis_prefix=REDIS_PREFIX,
        slot=SLOT,
        publication=PUBLICATION,
    )
    env["LOYALTY_PG_DSN"] = scratch.indexer_dsn
    return env


def create_scratch(args: argparse.Namespace) -> Scratch:
    plan = seed_plan_of(args)
    log(f"seeding {args.customers:,} customers, {args.vouchers:,} vouchers in {args.database}")
    dsn, report = seeded_database(args.dsn, args.database, plan)
    log(f"  {report.total_rows:,} rows in {report.elapsed:.1f} s")
    statements = enable_statements(dsn)
    tenant = make_key_and_read_tenant(dsn)
    role, indexer_dsn = asyncio.run(indexer_access(dsn, args.indexer_dsn, args.database))
    return Scratch(dsn, indexer_dsn, role, tenant, statements)


def enable_statements(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute(OWN + "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute(OWN + "SELECT 1 FROM pg_stat_statements LIMIT 1")
        except psycopg.Error as error:
            log(f"pg_stat_statements unavailable ({error}): no per-statement figures")
            return False
    return True


def make_key_and_read_tenant(dsn: str) -> Tenant:
    """The benchmark key of the first project (inserted before the indexer starts, so its
    initial load carries it to Redis) and that project's vouchers and customers."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(OWN + "SELECT id FROM projects ORDER BY id LIMIT 1").fetchone()
        if row is None:
            raise SystemExit("the seed made no project")
        project_id = str(row[0])
        conn.execute(
            OWN + "INSERT INTO api_keys (id, project_id, token_sha256, rate_limit_per_minute)"
            " VALUES (%s, %s, %s, %s)",
            (APP_ID, project_id, hashlib.sha256(TOKEN.encode()).hexdigest(), NO_LIMIT),
        )
        vouchers = [
            Voucher(str(voucher_id), str(code), str(kind))
            for voucher_id, code, kind in conn.execute(
                OWN + "SELECT id, code, type FROM vouchers WHERE project_id = %s ORDER BY id",
                (project_id,),
            ).fetchall()
        ]
        customers = [
            str(customer_id)
            for (customer_id,) in conn.execute(
                OWN + "SELECT id FROM customers WHERE project_id = %s ORDER BY id", (project_id,)
            ).fetchall()
        ]
    if not vouchers or not customers:
        raise SystemExit(f"project {project_id} has no vouchers or no customers: seed more")
    return Tenant(project_id, vouchers, customers)


async def indexer_access(admin_dsn: str, indexer_dsn: str, database: str) -> tuple[str, str]:
    """The role the indexer runs as and its DSN for the scratch database: the role of
    ``indexer_dsn`` with ``indexer setup``'s grants and the publication, or the admin when
    that role does not exist."""
    role = role_of(indexer_dsn) or ""
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        cursor = await conn.execute(OWN + "SELECT current_user")
        current = await cursor.fetchone()
        admin = str(current[0]) if current is not None else ""
        cursor = await conn.execute(OWN + "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        exists = await cursor.fetchone() is not None
    if role and exists and role != admin:
        for line in await setup_database(admin_dsn, role, PUBLICATION):
            log(f"  setup: {line}")
        return role, dsn_for(indexer_dsn, database)
    log(f"role {role!r} does not exist: the indexer runs as the admin {admin!r}")
    return admin, admin_dsn


# --- the batch ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedTransaction:
    kind: str  # CUSTOMERS or REDEMPTIONS
    first: int  # index of its first row among the batch's rows of that kind
    rows: int


def plan_transactions(
    customers: int, redemptions: int, tx_rows: int, order: str
) -> list[PlannedTransaction]:
    """The batch cut into transactions of ``tx_rows`` rows of one kind; interleaved keeps
    the share of customer transactions done even all along."""
    customer_txs = [
        PlannedTransaction(CUSTOMERS, first, min(tx_rows, customers - first))
        for first in range(0, customers, tx_rows)
    ]
    redemption_txs = [
        PlannedTransaction(REDEMPTIONS, first, min(tx_rows, redemptions - first))
        for first in range(0, redemptions, tx_rows)
    ]
    if order == "customers-first" or not customer_txs or not redemption_txs:
        return customer_txs + redemption_txs
    merged: list[PlannedTransaction] = []
    c = r = 0
    while c < len(customer_txs) or r < len(redemption_txs):
        # Customers first on a tie: a redemption may then name a customer of the batch.
        customers_behind = c / len(customer_txs) <= r / len(redemption_txs)
        if r == len(redemption_txs) or (c < len(customer_txs) and customers_behind):
            merged.append(customer_txs[c])
            c += 1
        else:
            merged.append(redemption_txs[r])
            r += 1
    return merged


def batch_customer_id(index: int) -> str:
    return f"cust_burst_{index:08d}"


def customer_rows(
    project_id: str, first: int, rows: int, rng: random.Random
) -> list[tuple[Any, ...]]:
    """New customers as a CRM export would bring them: every column but the timestamps."""
    made: list[tuple[Any, ...]] = []
    for index in range(first, first + rows):
        first_name, first_ascii = rng.choice(FIRST_NAMES)
        last_name, last_ascii = rng.choice(LAST_NAMES)
        city, state, country, postal, dial = rng.choice(CITIES)
        address = {
            "city": city,
            "state": state,
            "country": country,
            "line_1": f"{rng.randint(1, 999)} Import Street",
            "line_2": None,
            "postal_code": f"{postal}{rng.randint(0, 999):03d}",
        }
        metadata = {"tier": rng.choices(TIERS, TIER_WEIGHTS)[0], "imported": True}
        made.append(
            (
                batch_customer_id(index),
                project_id,
                f"import-{index:08d}",
                f"{first_name} {last_name}",
                f"{first_ascii}.{last_ascii}.import{index}@{rng.choice(DOMAINS)}",
                f"{dial} {rng.randint(1_000_000, 9_999_999)}",
                json.dumps(address, ensure_ascii=False),
                json.dumps(metadata),
            )
        )
    return made


@dataclass
class VoucherBump:
    """What one transaction's successful redemptions of a voucher add up to."""

    redeemed: int = 0
    amount: int = 0
    points: int = 0


def redemption_rows(
    tenant: Tenant, first: int, rows: int, batch_customers: int, rng: random.Random
) -> tuple[list[tuple[Any, ...]], dict[str, VoucherBump]]:
    """Redemptions of the tenant's vouchers (half by customers of the batch already
    committed), and the voucher updates they make."""
    made: list[tuple[Any, ...]] = []
    bumps: dict[str, VoucherBump] = {}
    for index in range(first, first + rows):
        voucher = rng.choice(tenant.vouchers)
        pick = rng.random()
        customer: str | None = None
        if batch_customers and pick < 0.5:
            customer = batch_customer_id(rng.randrange(batch_customers))
        elif pick < 0.9:
            customer = rng.choice(tenant.customer_ids)
        amount = 100 * rng.randint(1, 50) if voucher.type == "GIFT_VOUCHER" else None
        points = 10 * rng.randint(1, 50) if voucher.type == "LOYALTY_CARD" else None
        success = rng.random() < 0.88
        made.append(
            (
                f"r_burst_{index:08d}",
                tenant.project_id,
                voucher.id,
                customer,
                amount,
                points,
                "SUCCESS" if success else "FAILURE",
            )
        )
        if success:
            bump = bumps.setdefault(voucher.id, VoucherBump())
            bump.redeemed += 1
            bump.amount += amount or 0
            bump.points += points or 0
    return made, bumps


@dataclass(slots=True)
class Commit:
    kind: str
    began: float  # wall clock, just before BEGIN
    committed: float  # wall clock, as COMMIT returned
    lsn: int  # pg_current_wal_lsn() right after the COMMIT
    customers: int
    redemptions: int
    vouchers: int  # rows the voucher UPDATE changed

    @property
    def rows(self) -> int:
        return self.customers + self.redemptions + self.vouchers


@dataclass
class Batch:
    """What the writer committed so far; read by the lag sampler while it grows."""

    commits: list[Commit] = field(default_factory=list)
    customers: int = 0
    redeemed_vouchers: set[str] = field(default_factory=set)

    @property
    def rows(self) -> int:
        return sum(commit.rows for commit in self.commits)


async def write_batch(
    dsn: str, tenant: Tenant, plan: list[PlannedTransaction], batch: Batch, seed: int
) -> None:
    """Every planned transaction, one after the other on one connection, as fast as
    Postgres takes them. The rows are made before each BEGIN."""
    rng = random.Random(seed)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for number, planned in enumerate(plan, 1):
            if planned.kind == CUSTOMERS:
                rows = customer_rows(tenant.project_id, planned.first, planned.rows, rng)
                began = time.time()
                async with conn.transaction():
                    await copy_rows(conn, SQL_COPY_CUSTOMERS, rows)
                counts = (len(rows), 0, 0)
            else:
                rows, bumps = redemption_rows(
                    tenant, planned.first, planned.rows, batch.customers, rng
                )
                began = time.time()
                async with conn.transaction():
                    await copy_rows(conn, SQL_COPY_REDEMPTIONS, rows)
                    updated = await bump_vouchers(conn, bumps)
                counts = (0, len(rows), updated)
                batch.redeemed_vouchers.update(bumps)
            committed = time.time()
            lsn = await wal_lsn(conn)
            batch.commits.append(Commit(planned.kind, began, committed, lsn, *counts))
            if planned.kind == CUSTOMERS:
                batch.customers = planned.first + planned.rows
            if number % 10 == 0 or number == len(plan):
                log(f"  {number}/{len(plan)} transactions committed, {batch.rows:,} rows")


async def copy_rows(
    conn: psycopg.AsyncConnection[Any], statement: str, rows: list[tuple[Any, ...]]
) -> None:
    async with conn.cursor().copy(statement) as copy:
        for row in rows:
            await copy.write_row(row)


async def bump_vouchers(conn: psycopg.AsyncConnection[Any], bumps: dict[str, VoucherBump]) -> int:
    ids = list(bumps)
    cursor = await conn.execute(
        SQL_BUMP_VOUCHERS,
        (
            ids,
            [bumps[i].redeemed for i in ids],
            [bumps[i].amount for i in ids],
            [bumps[i].points for i in ids],
        ),
    )
    return cursor.rowcount


async def wal_lsn(conn: psycopg.AsyncConnection[Any]) -> int:
    row = await (await conn.execute(SQL_WAL_LSN)).fetchone()
    assert row is not None
    return int(row[0])


# --- the reader (a process of its own) ------------------------------------------------------


@dataclass(frozen=True)
class ReaderPlan:
    base_url: str
    rate: float
    connections: int
    timeout: float
    voucher_codes: list[str]
    customer_ids: list[str]
    batch_customer_ids: list[str]
    out_path: str
    seed: int
    parent_pid: int


@dataclass(slots=True)
class Reading:
    planned: float  # wall clock
    slip: float  # seconds from the planned time to the request's start
    latency: float  # seconds from the planned time to the whole answer read
    status: int  # 0: no answer (refused, reset, timed out)
    kind: str


class ReaderProcess:
    """The reader in a spawned process, stopped through events (Ctrl-C reaches the bench,
    which stops it; it stops by itself when the bench is gone)."""

    def __init__(self, plan: ReaderPlan) -> None:
        context = multiprocessing.get_context("spawn")
        self.plan = plan
        self.ready = context.Event()
        self.stop = context.Event()
        self.visible = context.Event()
        self.process = context.Process(
            target=run_reader,
            args=(plan, self.ready, self.stop, self.visible),
            name="burst-reader",
            daemon=True,
        )

    def start(self, timeout: float = 60) -> float:
        """Starts it; the wall time it started reading (its first request's planned time, to
        within the event's round trip)."""
        self.process.start()
        if not self.ready.wait(timeout):
            raise RuntimeError(f"the reader did not start within {timeout:.0f} s")
        return time.time()

    def finish(self) -> list[Reading]:
        self.stop.set()
        self.process.join(self.plan.timeout + 30)
        self.close()
        return read_readings(Path(self.plan.out_path))

    def close(self) -> None:
        if self.process.pid is not None and self.process.is_alive():
            self.process.terminate()
            self.process.join(10)


def run_reader(
    plan: ReaderPlan, ready: ProcessEvent, stop: ProcessEvent, visible: ProcessEvent
) -> None:
    """The reader process's entry point."""
    import uvloop

    # Ctrl-C goes to the whole process group: the bench stops the reader itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    uvloop.run(read_open_loop(plan, ready, stop, visible))


@dataclass
class ReaderFlags:
    stopping: bool = False
    batch_visible: bool = False


async def watch_flags(
    plan: ReaderPlan, stop: ProcessEvent, visible: ProcessEvent, flags: ReaderFlags
) -> None:
    """The bench's events, looked at ten times a second rather than once per request."""
    while not stop.is_set() and os.getppid() == plan.parent_pid:
        flags.batch_visible = visible.is_set()
        await asyncio.sleep(0.1)
    flags.stopping = True


def pick_path(plan: ReaderPlan, rng: random.Random, batch_visible: bool) -> tuple[int, str]:
    """A request: its kind (index in READ_KINDS) and path."""
    pick = rng.random()
    if pick < 0.5:
        return 0, f"/v1/vouchers/{rng.choice(plan.voucher_codes)}"
    if batch_visible and pick < 0.75:
        return 2, f"/v1/customers/{rng.choice(plan.batch_customer_ids)}"
    return 1, f"/v1/customers/{rng.choice(plan.customer_ids)}"


async def read_open_loop(
    plan: ReaderPlan, ready: ProcessEvent, stop: ProcessEvent, visible: ProcessEvent
) -> None:
    rng = random.Random(plan.seed)
    flags = ReaderFlags()
    watcher = asyncio.create_task(watch_flags(plan, stop, visible, flags))
    records: list[tuple[float, float, float, int, int]] = []
    in_flight: set[asyncio.Task[None]] = set()

    async def one(session: aiohttp.ClientSession, planned: float, kind: int, path: str) -> None:
        sent = time.time()
        try:
            async with session.get(plan.base_url + path) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        records.append((planned, sent - planned, time.time() - planned, status, kind))

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=plan.connections),
        headers={"X-App-Id": APP_ID, "X-App-Token": TOKEN},
        timeout=aiohttp.ClientTimeout(total=plan.timeout),
    ) as session:
        start = time.time()
        ready.set()
        sent = 0
        while not flags.stopping:
            planned = start + sent / plan.rate
            # sleep(0) when late: the requests already due must get to run.
            await asyncio.sleep(max(0.0, planned - time.time()))
            kind, path = pick_path(plan, rng, flags.batch_visible)
            task = asyncio.create_task(one(session, planned, kind, path))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            sent += 1
        await asyncio.gather(*in_flight)
    await watcher
    with open(plan.out_path, "w", newline="") as out:  # noqa: ASYNC230 - once, at the end
        csv.writer(out).writerows(records)


def read_readings(path: Path) -> list[Reading]:
    with path.open(newline="") as file:
        return [
            Reading(float(planned), float(slip), float(latency), int(status), READ_KINDS[int(kind)])
            for planned, slip, latency, status, kind in csv.reader(file)
        ]


# --- observers ------------------------------------------------------------------------------


@dataclass(slots=True)
class LagSample:
    at: float  # wall clock
    watermark: int
    lag_seconds: float  # age of the oldest commit of the batch the watermark does not cover
    lag_bytes: int  # server WAL position - watermark


async def sample_lag(
    store: CacheStore, dsn: str, batch: Batch, samples: list[LagSample], done: asyncio.Event
) -> None:
    covered = 0
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        next_at = time.time()
        while not done.is_set():
            at = time.time()
            watermark = await store.get_watermark() or 0
            position = await wal_lsn(conn)
            commits = batch.commits
            # Commits come in LSN order (one writer): the covered ones are a prefix.
            while covered < len(commits) and commits[covered].lsn <= watermark:
                covered += 1
            lag = at - commits[covered].committed if covered < len(commits) else 0.0
            samples.append(LagSample(at, watermark, max(0.0, lag), max(0, position - watermark)))
            next_at += LAG_SAMPLE_SECONDS
            await asyncio.sleep(max(0.0, next_at - time.time()))


async def wait_for_watermark(
    store: CacheStore,
    target: int,
    indexer: subprocess.Popen[bytes],
    log_path: Path,
    within: float,
) -> float | None:
    """The wall time the watermark was first seen at ``target`` or past it; None when it was
    not ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if ((await store.get_watermark()) or 0) >= target:
            return time.time()
        if indexer.poll() is not None:
            raise RuntimeError(f"indexer run exited ({indexer.returncode}):\n{tail(log_path)}")
        await asyncio.sleep(VISIBLE_POLL_SECONDS)
    return None


@dataclass
class VisibilityCheck:
    customers_checked: int = 0
    customers_ok: int = 0
    vouchers_checked: int = 0
    vouchers_ok: int = 0
    mismatches: list[str] = field(default_factory=list)


async def check_through_api(
    port: int, dsn: str, batch: Batch, sample: int, seed: int
) -> VisibilityCheck:
    """A sample of the batch's customers and redeemed vouchers read through the API and
    compared with Postgres (nothing writes any more)."""
    rng = random.Random(seed)
    customers = rng.sample(
        [batch_customer_id(i) for i in range(batch.customers)], min(sample, batch.customers)
    )
    vouchers = rng.sample(
        sorted(batch.redeemed_vouchers), min(sample, len(batch.redeemed_vouchers))
    )
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            OWN + "SELECT c.id, c.email, (SELECT count(*) FROM redemptions r"
            " WHERE r.customer_id = c.id) FROM customers c WHERE c.id = ANY(%s)",
            (customers,),
        )
        expected_customers = {str(i): (email, int(n)) for i, email, n in await cursor.fetchall()}
        cursor = await conn.execute(
            OWN + "SELECT id, redeemed_quantity FROM vouchers WHERE id = ANY(%s)", (vouchers,)
        )
        expected_vouchers = {str(i): int(n) for i, n in await cursor.fetchall()}
    check = VisibilityCheck(len(customers), 0, len(vouchers), 0)
    base = f"http://127.0.0.1:{port}"
    # One request at a time: a light extra load on the API the reader is measuring.
    async with aiohttp.ClientSession(headers={"X-App-Id": APP_ID, "X-App-Token": TOKEN}) as http:

        async def served(path: str) -> tuple[int, Any]:
            async with http.get(base + path) as response:
                body = await response.json() if response.status == 200 else None
                return response.status, body

        for customer_id in customers:
            status, body = await served(f"/v1/customers/{customer_id}")
            email, redeemed = expected_customers[customer_id]
            shown = (
                None
                if body is None
                else (body["email"], body["summary"]["redemptions"]["total_redeemed"])
            )
            if status == 200 and shown == (email, redeemed):
                check.customers_ok += 1
            else:
                check.mismatches.append(
                    f"customer {customer_id}: HTTP {status}, e-mail and redemptions {shown}, "
                    f"Postgres {(email, redeemed)}"
                )
        for voucher_id in vouchers:
            status, body = await served(f"/v1/vouchers/{voucher_id}")
            quantity = None if body is None else body["redemption"]["redeemed_quantity"]
            if status == 200 and quantity == expected_vouchers[voucher_id]:
                check.vouchers_ok += 1
            else:
                check.mismatches.append(
                    f"voucher {voucher_id}: HTTP {status}, redeemed_quantity {quantity}, "
                    f"Postgres {expected_vouchers[voucher_id]}"
                )
    return check


# --- Postgres counters ----------------------------------------------------------------------


@dataclass
class PgCounters:
    database: dict[str, int]
    tables: dict[str, tuple[int, int, int, int]]  # heap read, heap hit, index read, index hit


async def read_counters(conn: psycopg.AsyncConnection[Any]) -> PgCounters:
    row = await (await conn.execute(SQL_DATABASE_STATS)).fetchone()
    assert row is not None
    tables = {
        str(name): (int(a), int(b), int(c), int(d))
        for name, a, b, c, d in await (await conn.execute(SQL_TABLE_STATS)).fetchall()
    }
    return PgCounters(dict(zip(DATABASE_STATS, (int(v) for v in row), strict=True)), tables)


def counter_delta(before: PgCounters, after: PgCounters) -> PgCounters:
    def minus(later: tuple[int, int, int, int], name: str) -> tuple[int, int, int, int]:
        earlier = before.tables.get(name, (0, 0, 0, 0))
        return (
            later[0] - earlier[0],
            later[1] - earlier[1],
            later[2] - earlier[2],
            later[3] - earlier[3],
        )

    return PgCounters(
        {name: after.database[name] - before.database[name] for name in DATABASE_STATS},
        {name: minus(values, name) for name, values in after.tables.items()},
    )


@dataclass
class StatementFigures:
    query: str
    calls: int
    blocks_read: int
    blocks_hit: int
    exec_ms: float


async def indexer_statements(
    conn: psycopg.AsyncConnection[Any], role: str
) -> list[StatementFigures]:
    """The indexer's statements in the scratch database since the reset, most blocks first."""
    cursor = await conn.execute(SQL_STATEMENTS, (role, OWN.strip() + "%"))
    rows = await cursor.fetchall()
    figures = [
        StatementFigures(" ".join(str(q).split()), int(c), int(r), int(h), float(t))
        for q, c, r, h, t in rows
    ]
    return sorted(figures, key=lambda s: s.blocks_read + s.blocks_hit, reverse=True)


# --- where the time goes --------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Usage:
    """CPU seconds spent so far, and Elasticsearch's indexing counters."""

    cpu: dict[str, float]  # by process name, its live children included
    elasticsearch_cpu: float
    machine_busy: float  # every core, every process
    indexing: dict[str, tuple[int, int]]  # by kind: index operations, milliseconds
    # Over every kind's index (primaries): what else Elasticsearch did, see ES_WORK.
    work: dict[str, int]


# Counters of the indices' stats (primaries) that tell where Elasticsearch's CPU goes besides
# indexing itself: refreshes (the periodic ones and those a realtime get of a document not
# yet searchable forces), merges, realtime gets, searches.
ES_WORK: dict[str, tuple[str, str]] = {
    "refreshes": ("refresh", "total"),
    "refresh ms": ("refresh", "total_time_in_millis"),
    "external refreshes": ("refresh", "external_total"),
    "merges": ("merges", "total"),
    "merge ms": ("merges", "total_time_in_millis"),
    "gets": ("get", "total"),
    "get ms": ("get", "time_in_millis"),
    "queries": ("search", "query_total"),
    "query ms": ("search", "query_time_in_millis"),
    "flushes": ("flush", "total"),
    "segments now": ("segments", "count"),
}


def process_cpu_seconds(pid: int, *, children: bool) -> float:
    """User and system time of a process, with its live children's (``readapi serve``'s
    workers when it forks them) when asked; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split() if children else []
    except OSError:
        return 0.0
    # The fields after the command's closing parenthesis: state first, utime 12th, stime 13th.
    fields = stat.rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return own + sum(process_cpu_seconds(int(kid), children=True) for kid in kids)


def machine_busy_seconds() -> float:
    """CPU time of every core not idle (nor waiting for I/O) since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLOCK_TICKS


async def read_usage(services: Services) -> Usage:
    elastic = services.elastic
    nodes = (await elastic.nodes.stats(node_id="_local", metric="process")).body["nodes"]
    es_cpu = sum(node["process"]["cpu"]["total_in_millis"] for node in nodes.values()) / 1000
    names = IndexNames(ES_PREFIX)
    indexing: dict[str, tuple[int, int]] = {}
    work = dict.fromkeys(ES_WORK, 0)
    # The stats API names the merge metric "merge" and its section "merges".
    sections = {section for section, _ in ES_WORK.values()}
    metrics = sorted({"indexing", *(s.removesuffix("s") if s == "merges" else s for s in sections)})
    for kind in INDEXED_KINDS:
        stats = await elastic.indices.stats(index=names.alias(kind), metric=metrics)
        primaries = stats.body["_all"]["primaries"]
        counters = primaries["indexing"]
        indexing[kind.value] = (int(counters["index_total"]), int(counters["index_time_in_millis"]))
        for name, (section, counter) in ES_WORK.items():
            work[name] += int(primaries.get(section, {}).get(counter, 0))
    return Usage(
        {
            name: process_cpu_seconds(pid, children=children)
            for name, (pid, children) in services.pids.items()
        },
        es_cpu,
        machine_busy_seconds(),
        indexing,
        work,
    )


def usage_delta(before: Usage, after: Usage) -> Usage:
    return Usage(
        {name: seconds - before.cpu.get(name, 0.0) for name, seconds in after.cpu.items()},
        after.elasticsearch_cpu - before.elasticsearch_cpu,
        after.machine_busy - before.machine_busy,
        {
            kind: (total - before.indexing[kind][0], millis - before.indexing[kind][1])
            for kind, (total, millis) in after.indexing.items()
        },
        {
            # A gauge is reported as it ended; every other counter as its increase.
            name: value if name == "segments now" else value - before.work.get(name, 0)
            for name, value in after.work.items()
        },
    )


# --- the run --------------------------------------------------------------------------------


@dataclass
class Timeline:
    """Wall-clock marks of one run."""

    reader_started: float = 0.0
    before_started: float = 0.0
    first_began: float = 0.0
    last_committed: float = 0.0
    visible: float | None = None
    after_ended: float = 0.0


@dataclass
class Run:
    timeline: Timeline
    batch: Batch
    plan_size: int
    lag: list[LagSample]
    readings: list[Reading]
    check: VisibilityCheck | None
    counters: PgCounters | None
    statements: list[StatementFigures] | None
    usage: Usage


@dataclass
class Services:
    """What the burst runs against, once the indexer caught up and the API is ready."""

    store: CacheStore
    elastic: AsyncElasticsearch
    port: int
    indexer: subprocess.Popen[bytes]
    indexer_log: Path
    # The processes whose CPU time is reported, by name: pid, and whether its children count
    # (not the bench's: they are the others).
    pids: dict[str, tuple[int, bool]]


async def measure(
    args: argparse.Namespace,
    scratch: Scratch,
    children: Children,
    settings: IndexerSettings,
    readers: list[ReaderProcess],
) -> Run:
    redis = aioredis.Redis.from_url(settings.redis_url)
    elastic = AsyncElasticsearch(es_hosts(settings.es_url), request_timeout=30)
    try:
        store = CacheStore(redis, KeyLayout(REDIS_PREFIX))
        indexer_log = OUT / "burst-indexer.log"
        indexer = children.start(
            [sys.executable, "-m", "indexer.cli", "run", "--log-level", "INFO"],
            env_for(scratch),
            indexer_log,
        )
        async with await psycopg.AsyncConnection.connect(
            scratch.admin_dsn, autocommit=True
        ) as conn:
            target = await wal_lsn(conn)
        log(
            f"indexer run as {scratch.indexer_role}: initial load, until its watermark passes "
            "the WAL position after the setup"
        )
        loaded = await wait_for_watermark(store, target, indexer, indexer_log, args.timeout)
        if loaded is None:
            raise RuntimeError(f"indexer not caught up in {args.timeout:.0f} s")
        port = free_port()
        api_log = OUT / "burst-readapi.log"
        api_argv = ["serve", "--port", str(port), "--workers", str(args.api_workers)]
        api = children.start(
            [sys.executable, "-m", "readapi.cli", *api_argv, "--log-level", "WARNING"],
            env_for(scratch),
            api_log,
        )
        await wait_api_ready(port, api, api_log)
        log(f"readapi serve on port {port}; reader at {args.read_rate:g} requests/s")
        pids = {
            "indexer": (indexer.pid, True),
            "read API": (api.pid, True),
            "bench (writer, sampler)": (os.getpid(), False),
        }
        services = Services(store, elastic, port, indexer, indexer_log, pids)
        return await burst_under_reads(args, scratch, services, readers)
    finally:
        await elastic.close()
        await redis.aclose()


def reader_plan(
    args: argparse.Namespace, scratch: Scratch, port: int, out_path: Path
) -> ReaderPlan:
    rng = random.Random(args.seed)
    tenant = scratch.tenant
    vouchers = rng.sample(tenant.vouchers, min(args.read_sample, len(tenant.vouchers)))
    customers = rng.sample(tenant.customer_ids, min(args.read_sample, len(tenant.customer_ids)))
    return ReaderPlan(
        base_url=f"http://127.0.0.1:{port}",
        rate=args.read_rate,
        connections=args.read_connections,
        timeout=args.read_timeout,
        voucher_codes=[voucher.code for voucher in vouchers],
        customer_ids=customers,
        batch_customer_ids=[batch_customer_id(i) for i in range(args.customers_batch)] or customers,
        out_path=str(out_path),
        seed=args.seed,
        parent_pid=os.getpid(),
    )


async def burst_under_reads(
    args: argparse.Namespace, scratch: Scratch, services: Services, readers: list[ReaderProcess]
) -> Run:
    out_dir = Path(tempfile.mkdtemp(prefix="burst_reads_"))
    try:
        reader = ReaderProcess(reader_plan(args, scratch, services.port, out_dir / "reads.csv"))
        readers.append(reader)
        timeline = Timeline()
        timeline.reader_started = await asyncio.to_thread(reader.start)
        if reader.process.pid is not None:
            services.pids["reader"] = (reader.process.pid, False)
        batch = Batch()
        lag: list[LagSample] = []
        done = asyncio.Event()
        sampler = asyncio.create_task(
            sample_lag(services.store, scratch.admin_dsn, batch, lag, done)
        )
        try:
            await asyncio.sleep(args.warmup)
            timeline.before_started = time.time()
            log(f"reads alone for {args.before:g} s")
            await asyncio.sleep(args.before)
            run = await burst(args, scratch, services, reader, batch, timeline)
        finally:
            done.set()
            await sampler
        run.readings = await asyncio.to_thread(reader.finish)
        run.lag = lag
        return run
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


async def burst(
    args: argparse.Namespace,
    scratch: Scratch,
    services: Services,
    reader: ReaderProcess,
    batch: Batch,
    timeline: Timeline,
) -> Run:
    plan = plan_transactions(args.customers_batch, args.redemptions_batch, args.tx_rows, args.order)
    async with await psycopg.AsyncConnection.connect(scratch.admin_dsn, autocommit=True) as stats:
        if scratch.statements_available:
            await stats.execute(SQL_RESET_STATEMENTS)
        counters_before = await read_counters(stats)
        usage_before = await read_usage(services)
        log(
            f"burst: {args.customers_batch:,} customers and {args.redemptions_batch:,} "
            f"redemptions in {len(plan)} transactions ({args.order})"
        )
        await write_batch(scratch.admin_dsn, scratch.tenant, plan, batch, args.seed)
        timeline.first_began = batch.commits[0].began
        timeline.last_committed = batch.commits[-1].committed
        writer_seconds = timeline.last_committed - timeline.first_began
        log(
            f"  committed in {writer_seconds:.1f} s; waiting for the watermark to pass "
            "the last commit"
        )
        timeline.visible = await wait_for_watermark(
            services.store,
            batch.commits[-1].lsn,
            services.indexer,
            services.indexer_log,
            args.timeout,
        )
        usage = usage_delta(usage_before, await read_usage(services))
        check = None
        if timeline.visible is None:
            log(f"  not visible after {args.timeout:.0f} s: giving up")
        else:
            reader.visible.set()
            log(
                f"  visible {timeline.visible - timeline.first_began:.1f} s after the first "
                f"BEGIN; checking {args.check_sample} customers and vouchers through the API"
            )
            check = await check_through_api(
                services.port, scratch.admin_dsn, batch, args.check_sample, args.seed
            )
        ended = timeline.visible or time.time()
        await asyncio.sleep(max(0.0, ended + STATS_SETTLE_SECONDS - time.time()))
        counters = counter_delta(counters_before, await read_counters(stats))
        statements = (
            await indexer_statements(stats, scratch.indexer_role)
            if scratch.statements_available
            else None
        )
    log(f"reads for {args.after:g} s after")
    await asyncio.sleep(max(0.0, ended + args.after - time.time()))
    timeline.after_ended = ended + args.after
    return Run(timeline, batch, len(plan), [], [], check, counters, statements, usage)


# --- figures --------------------------------------------------------------------------------


@dataclass
class ReadWindow:
    name: str
    start: float  # seconds since the reader started
    end: float
    requests: int
    per_second: float
    non_2xx: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    slip_p99_ms: float


def read_window(
    name: str, readings: list[Reading], start: float, end: float, t0: float
) -> ReadWindow:
    """Requests planned in ``[start, end)`` (wall clock)."""
    chosen = [r for r in readings if start <= r.planned < end]
    latencies = sorted(r.latency * 1000 for r in chosen)
    slips = sorted(r.slip * 1000 for r in chosen)
    seconds = end - start
    return ReadWindow(
        name,
        start - t0,
        end - t0,
        len(chosen),
        len(chosen) / seconds if seconds > 0 else 0.0,
        sum(1 for r in chosen if not 200 <= r.status < 300),
        percentile(latencies, 50),
        percentile(latencies, 99),
        latencies[-1] if latencies else float("nan"),
        percentile(slips, 99),
    )


def read_windows(run: Run) -> list[ReadWindow]:
    timeline = run.timeline
    t0 = timeline.reader_started
    visible = timeline.visible or timeline.after_ended
    return [
        read_window("before", run.readings, timeline.before_started, timeline.first_began, t0),
        read_window("during", run.readings, timeline.first_began, visible, t0),
        read_window("after", run.readings, visible, timeline.after_ended, t0),
    ]


def per_second(readings: list[Reading], t0: float) -> list[dict[str, float]]:
    """Requests by the second of their planned time: count, non-2xx, p50, p99."""
    buckets: dict[int, list[Reading]] = {}
    for reading in readings:
        buckets.setdefault(int(reading.planned - t0), []).append(reading)
    series = []
    for second in sorted(buckets):
        latencies = sorted(r.latency * 1000 for r in buckets[second])
        series.append(
            {
                "second": second + 0.5,
                "requests": len(latencies),
                "non_2xx": sum(1 for r in buckets[second] if not 200 <= r.status < 300),
                "p50_ms": percentile(latencies, 50),
                "p99_ms": percentile(latencies, 99),
            }
        )
    return series


def blocks(statements: list[StatementFigures] | None) -> dict[str, int] | None:
    if statements is None:
        return None
    return {
        "calls": sum(s.calls for s in statements),
        "shared_blks_read": sum(s.blocks_read for s in statements),
        "shared_blks_hit": sum(s.blocks_hit for s in statements),
    }


def summary(args: argparse.Namespace, scratch: Scratch, run: Run) -> dict[str, Any]:
    """Every figure of the run, as printed, drawn and written to the JSON file."""
    timeline, batch = run.timeline, run.batch
    rows = batch.rows
    writer_seconds = timeline.last_committed - timeline.first_began
    catchup_seconds = None if timeline.visible is None else timeline.visible - timeline.first_began
    windows = read_windows(run)
    before, during = windows[0], windows[1]
    return {
        "customers": args.customers,
        "vouchers": args.vouchers,
        "tenant": scratch.tenant.project_id,
        "indexer_role": scratch.indexer_role,
        "transactions": run.plan_size,
        "changed_rows": rows,
        "customers_inserted": sum(c.customers for c in batch.commits),
        "redemptions_inserted": sum(c.redemptions for c in batch.commits),
        "vouchers_updated": sum(c.vouchers for c in batch.commits),
        "writer_seconds": writer_seconds,
        "writer_rows_per_second": rows / writer_seconds if writer_seconds > 0 else None,
        "catchup_seconds": catchup_seconds,
        "catchup_rows_per_second": rows / catchup_seconds if catchup_seconds else None,
        "visible_after_last_commit_seconds": (
            None if timeline.visible is None else timeline.visible - timeline.last_committed
        ),
        "max_lag_seconds": max((s.lag_seconds for s in run.lag), default=0.0),
        "check": None if run.check is None else asdict(run.check),
        "reads": [asdict(window) for window in windows],
        "p99_ratio": during.p99_ms / before.p99_ms if before.p99_ms > 0 else float("nan"),
        "indexer_blocks": blocks(run.statements),
        "indexer_statements": [asdict(s) for s in (run.statements or [])[:20]],
        "database_counters": None if run.counters is None else run.counters.database,
        "table_counters": None if run.counters is None else run.counters.tables,
        "usage": asdict(run.usage),
        "timeline": asdict(timeline),
        "commits": [asdict(commit) for commit in batch.commits],
        "reads_per_second": per_second(run.readings, timeline.reader_started),
        "lag": [asdict(sample) for sample in run.lag],
    }


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def per_row(value: int, rows: int) -> str:
    return f"{value / rows:.2f}" if rows else "n/a"


def print_report(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    rows = figures["changed_rows"]
    print()
    print(
        f"{args.customers:,} customers / {args.vouchers:,} vouchers seeded; batch into "
        f"{figures['tenant']}: {args.customers_batch:,} customers + "
        f"{args.redemptions_batch:,} redemptions, {figures['transactions']} transactions of "
        f"{args.tx_rows:,} ({args.order}); reader {args.read_rate:g} requests/s"
    )
    print(
        f"  {'changed rows':<28}{rows:,} = {figures['customers_inserted']:,} customers + "
        f"{figures['redemptions_inserted']:,} redemptions + {figures['vouchers_updated']:,} "
        "voucher updates"
    )
    print(
        f"  {'writer':<28}{figures['writer_seconds']:.1f} s, "
        f"{figures['writer_rows_per_second'] or 0:,.0f} rows/s committed (first BEGIN to last "
        "COMMIT)"
    )
    print_catchup(args, figures)
    print_check(figures["check"])
    print()
    print(
        f"  {'reads':<8}{'from s':>8}{'to s':>8}{'requests':>10}{'req/s':>8}{'non-2xx':>9}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'slip p99':>10}"
    )
    for w in figures["reads"]:
        print(
            f"  {w['name']:<8}{w['start']:>8.1f}{w['end']:>8.1f}{w['requests']:>10,}"
            f"{w['per_second']:>8.0f}{w['non_2xx']:>9}{w['p50_ms']:>9.2f}{w['p99_ms']:>9.2f}"
            f"{w['max_ms']:>9.1f}{w['slip_p99_ms']:>10.2f}"
        )
    ratio = figures["p99_ratio"]
    print(
        f"  {'p99 during / p99 before':<28}{ratio:.2f}x  goal < {GOAL_P99_RATIO:g}x  "
        f"{verdict(ratio < GOAL_P99_RATIO)}"
    )
    print(
        "  (latency from each request's planned send time; slip: from the planned time to the "
        "request's start, the reader's own delay)"
    )
    print()
    print_usage(figures)
    print_blocks(figures)


def print_catchup(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    catchup = figures["catchup_rows_per_second"]
    if catchup is None:
        print(f"  {'catch-up':<28}NOT VISIBLE within {args.timeout:.0f} s  MISSED")
    else:
        goal = GOAL_CATCHUP_ROWS_PER_SECOND
        print(
            f"  {'catch-up':<28}{figures['catchup_seconds']:.1f} s from the first BEGIN to the "
            f"whole batch visible ({figures['visible_after_last_commit_seconds']:.1f} s after "
            f"the last COMMIT): {catchup:,.0f} rows/s  goal >= {goal:,}  "
            f"{verdict(catchup >= goal)}"
        )
    print(
        f"  {'max indexer lag':<28}{figures['max_lag_seconds']:.1f} s (the oldest commit of the "
        f"batch not under the watermark, sampled every {LAG_SAMPLE_SECONDS:g} s)"
    )


def print_check(check: dict[str, Any] | None) -> None:
    if check is None:
        return
    print(
        f"  {'served through the API':<28}{check['customers_ok']}/{check['customers_checked']} "
        f"batch customers (e-mail, redemptions), {check['vouchers_ok']}/"
        f"{check['vouchers_checked']} redeemed vouchers (redeemed_quantity) as in Postgres, "
        "read as soon as visible"
    )
    for mismatch in check["mismatches"][:5]:
        print(f"    differs: {mismatch}")


def print_usage(figures: dict[str, Any]) -> None:
    usage, seconds = figures["usage"], figures["catchup_seconds"]
    if seconds is None:
        return
    cores = os.cpu_count() or 1
    named = {"Elasticsearch": usage["elasticsearch_cpu"], **usage["cpu"]}
    rest = usage["machine_busy"] - sum(named.values())
    spent = ", ".join(f"{name} {cpu:.1f}" for name, cpu in named.items())
    print(
        f"  CPU seconds, burst start to visible ({seconds:.1f} s x {cores} cores = "
        f"{seconds * cores:.0f}; busy {usage['machine_busy']:.1f}): {spent}, the rest "
        f"(Postgres, Redis, anything else on the machine) {rest:.1f}"
    )
    indexed = ", ".join(
        f"{kind}s {total:,} in {millis / 1000:.1f} s"
        for kind, (total, millis) in usage["indexing"].items()
        if total
    )
    print(f"  Elasticsearch indexing meanwhile (primaries: operations, indexing time): {indexed}")
    work = ", ".join(f"{name} {value:,}" for name, value in usage.get("work", {}).items())
    print(f"  Elasticsearch's other work meanwhile (primaries, every kind): {work}")


def print_blocks(figures: dict[str, Any]) -> None:
    rows = figures["changed_rows"]
    seconds = figures["catchup_seconds"] or 0.0
    totals = figures["indexer_blocks"]
    if totals is None:
        print("  indexer's Postgres blocks: n/a (pg_stat_statements unavailable)")
    else:
        read, hit = totals["shared_blks_read"], totals["shared_blks_hit"]
        rate = f"; {read / seconds:,.0f} reads/s over the catch-up" if seconds else ""
        print(
            f"  indexer's Postgres blocks (pg_stat_statements, role {figures['indexer_role']}, "
            f"this database, burst start to visible + {STATS_SETTLE_SECONDS:g} s)"
        )
        print(
            f"    {totals['calls']:,} calls; shared_blks_read {read:,} = {per_row(read, rows)} "
            f"per changed row{rate}; shared_blks_hit {hit:,} = {per_row(hit, rows)} per "
            "changed row"
        )
        print("    statements touching most blocks (calls, read, hit, execution time, text):")
        for s in figures["indexer_statements"][:6]:
            print(
                f"    {s['calls']:>8,}{s['blocks_read']:>10,}{s['blocks_hit']:>12,}"
                f"{s['exec_ms'] / 1000:>7.1f} s  {s['query'][:80]}"
            )
    database = figures["database_counters"]
    if database is None:
        return
    print("  whole database (pg_stat_database: the writer's, the indexer's and the bench's)")
    print(
        f"    blks_read {database['blks_read']:,} = {per_row(database['blks_read'], rows)} per "
        f"changed row; blks_hit {database['blks_hit']:,} = "
        f"{per_row(database['blks_hit'], rows)} per changed row; xact_commit "
        f"{database['xact_commit']:,}; tup_inserted {database['tup_inserted']:,}, "
        f"tup_updated {database['tup_updated']:,}, tup_fetched {database['tup_fetched']:,}"
    )
    print(
        f"  {'by table (pg_statio_user_tables)':<40}{'heap read':>10}{'heap hit':>13}"
        f"{'idx read':>10}{'idx hit':>13}"
    )
    tables = sorted(figures["table_counters"].items(), key=lambda item: -sum(item[1]))
    for name, (heap_read, heap_hit, index_read, index_hit) in tables:
        if heap_read + heap_hit + index_read + index_hit:
            print(f"    {name:<38}{heap_read:>10,}{heap_hit:>13,}{index_read:>10,}{index_hit:>13,}")


def plot(args: argparse.Namespace, figures: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = figures["timeline"]
    t0 = timeline["reader_started"]
    fig, (lag_ax, read_ax) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    times = [s["at"] - t0 for s in figures["lag"]]
    lag_ax.plot(
        times,
        [s["lag_seconds"] for s in figures["lag"]],
        color="tab:blue",
        label="indexer lag: the oldest commit not under the watermark, s",
    )
    lag_ax.set_ylabel("lag, s")
    lag_ax.set_ylim(bottom=0)
    # The WAL distance on a second axis: its shape, not its scale, is what compares.
    bytes_ax = lag_ax.twinx()
    bytes_ax.plot(
        times,
        [s["lag_bytes"] / 2**20 for s in figures["lag"]],
        color="tab:gray",
        linewidth=0.8,
        alpha=0.6,
        label="WAL behind the watermark, MiB (server-wide)",
    )
    bytes_ax.set_ylabel("MiB")
    bytes_ax.set_ylim(bottom=0)
    lag_lines, lag_labels = lag_ax.get_legend_handles_labels()
    byte_lines, byte_labels = bytes_ax.get_legend_handles_labels()
    lag_ax.legend(lag_lines + byte_lines, lag_labels + byte_labels, loc="upper left")
    seconds = figures["reads_per_second"]
    plot_reads_per_second(
        read_ax,
        seconds,
        failed_key="non_2xx",
        failed_label="second with non-2xx answers",
        xlabel="seconds since the reader started (grey: warm-up, not counted)",
    )
    for ax in (lag_ax, read_ax):
        ax.axvspan(0, timeline["before_started"] - t0, color="tab:gray", alpha=0.08)
        ax.axvspan(
            timeline["first_began"] - t0,
            timeline["last_committed"] - t0,
            color="tab:orange",
            alpha=0.18,
        )
        if timeline["visible"] is not None:
            ax.axvline(timeline["visible"] - t0, color="tab:green", linestyle="--", linewidth=1)
    catchup = figures["catchup_rows_per_second"]
    rate = "" if catchup is None else f", {catchup:,.0f} rows/s"
    lag_ax.set_title(
        f"batch import of {args.customers_batch:,} customers + {args.redemptions_batch:,} "
        f"redemptions, {figures['changed_rows']:,} changed rows\n(orange: the writer's "
        f"transactions; dashed: the whole batch visible{rate})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main -----------------------------------------------------------------------------------


class Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    settings = IndexerSettings.from_env()
    parser = argparse.ArgumentParser(
        prog="bench/burst.py",
        description=__doc__,
        formatter_class=Help,
    )
    data = parser.add_argument_group("base population (seed)")
    data.add_argument("--customers", type=int, default=100_000, help="customers")
    data.add_argument("--vouchers", type=int, default=200_000, help="vouchers")
    data.add_argument("--redemptions", type=int, default=SeedPlan().redemptions, help="redemptions")
    data.add_argument(
        "--projects",
        type=int,
        default=SeedPlan().projects,
        help="projects (the batch goes to the first)",
    )
    data.add_argument("--seed", type=int, default=7, help="seed of the data, batch and reads")
    burst_group = parser.add_argument_group("the burst")
    burst_group.add_argument(
        "--customers-batch", type=int, default=200_000, help="new customers imported"
    )
    burst_group.add_argument(
        "--redemptions-batch", type=int, default=200_000, help="redemptions imported"
    )
    burst_group.add_argument(
        "--tx-rows", type=int, default=10_000, help="inserted rows per transaction"
    )
    burst_group.add_argument(
        "--order",
        choices=("interleaved", "customers-first"),
        default="interleaved",
        help="customer and redemption transactions interleaved, or all customers first",
    )
    reads = parser.add_argument_group("the reader")
    reads.add_argument("--read-rate", type=float, default=400, help="requests per second")
    reads.add_argument(
        "--read-connections", type=int, default=32, help="connections the reader may open at most"
    )
    reads.add_argument(
        "--read-timeout",
        type=float,
        default=10,
        help="seconds before a request counts as unanswered",
    )
    reads.add_argument(
        "--read-sample",
        type=int,
        default=10_000,
        help="vouchers and customers of the base population read",
    )
    reads.add_argument(
        "--warmup",
        type=float,
        default=2,
        help="seconds of reads before the 'before' window (not counted)",
    )
    reads.add_argument("--before", type=float, default=20, help="seconds of reads alone")
    reads.add_argument(
        "--after", type=float, default=20, help="seconds of reads after the batch is visible"
    )
    reads.add_argument("--api-workers", type=int, default=1, help="readapi serve --workers")
    run = parser.add_argument_group("run")
    run.add_argument(
        "--check-sample",
        type=int,
        default=200,
        help="batch customers and redeemed vouchers checked through the API",
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=1800,
        help="seconds allowed for the initial load, and for the batch to be visible",
    )
    run.add_argument(
        "--dsn",
        default=settings.pg_admin_dsn,
        help="any database of the Postgres server, as the admin",
    )
    run.add_argument(
        "--indexer-dsn",
        default=settings.pg_dsn,
        help="the indexer's role and password (its database is replaced by the "
        "scratch one); the admin is used when that role does not exist",
    )
    run.add_argument(
        "--database", default="loyalty_bench_burst", help="scratch database (dropped and created)"
    )
    run.add_argument(
        "--keep", action="store_true", help="keep the scratch database, slot, indices and keys"
    )
    args = parser.parse_args(argv)
    if min(args.tx_rows, args.read_sample, args.read_connections, args.api_workers) < 1:
        parser.error("--tx-rows, --read-sample, --read-connections, --api-workers: at least 1")
    if args.customers_batch < 0 or args.redemptions_batch < 0:
        parser.error("--customers-batch and --redemptions-batch may not be negative")
    if args.customers_batch + args.redemptions_batch == 0:
        parser.error("the batch is empty")
    if args.read_rate <= 0 or min(args.before, args.after, args.warmup) < 0:
        parser.error("--read-rate must be positive, --before, --after and --warmup not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    unwind_on_sigterm()
    settings = IndexerSettings.from_env()
    OUT.mkdir(parents=True, exist_ok=True)
    children = Children()
    readers: list[ReaderProcess] = []
    try:
        asyncio.run(clean_sinks(settings.es_url, settings.redis_url, ES_PREFIX, REDIS_PREFIX))
        scratch = create_scratch(args)
        run = asyncio.run(measure(args, scratch, children, settings, readers))
        figures = summary(args, scratch, run)
        print_report(args, figures)
        plot(args, figures, OUT / "burst.png")
        (OUT / "burst.json").write_text(json.dumps(figures, indent=1, default=str))
        print()
        print(f"plot: {OUT / 'burst.png'}; figures: {OUT / 'burst.json'}")
    finally:
        for reader in readers:
            reader.close()
        children.stop_all()
        if not args.keep:
            log("clean-up: scratch database, indices, keys")
            drop_database(dsn_for(args.dsn, "postgres"), args.database)
            asyncio.run(clean_sinks(settings.es_url, settings.redis_url, ES_PREFIX, REDIS_PREFIX))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
