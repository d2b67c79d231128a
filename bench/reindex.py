"""``indexer reindex`` at scale: documents/s, peak RSS and the read path while it runs.

For each size (the one asked, then a tenth of it, or a half with ``--second-size-divisor 2``),
a scratch database is created, migrated
and seeded (``indexer seed``'s generator), then:

1. ``indexer run`` starts and stays up: its initial load is the baseline (rows/s from its
   "initial load complete" line), and it keeps applying changes during both reindexes;
   ``readapi serve`` starts on a free port;
2. in this process, a paced reader (a few connections: voucher lookups by code, customer
   lookups by id, ``/v1/vouchers?limit=10`` and ``/v1/customers?limit=10``) records the
   time, latency and status of every request, and a writer updates a few existing vouchers
   per second, so the catch-up slot has changes to apply;
3. after a quiet window (the reads' baseline), ``indexer reindex --source postgres`` runs,
   then, after a short pause, ``indexer reindex --source index``. While each runs, its
   checkpoint (``rows_done``, ``phase``) and the index behind the voucher alias are sampled
   every 0.5 s: the derivative of ``rows_done`` is documents/s over time, the alias moving
   marks the switch. Wall time, exit status and the process's own peak RSS (``wait4``'s
   ``ru_maxrss``) are recorded;
4. both reindexes once more with the reader and the writer stopped: the reindex's own pace
   on this machine (two cores shared with Elasticsearch, Postgres and Redis);
5. a table per size: the initial load's rows/s, each reindex's documents/s (over its load,
   and end to end from process start to exit), its peak RSS, and the read path's requests,
   errors (status >= 500, a 404 of an object that exists, or no answer) and p50/p99 during
   each reindex and in the quiet window, with the issue's goals beside them.

The larger size is drawn to ``bench/out/reindex.png`` (documents/s and the read p99 per
second over one time axis, each alias switch marked); every figure, the checkpoint samples
and the per-second read figures of both sizes go to ``bench/out/reindex.json``.

Usage: PYTHONPATH=. python3 bench/reindex.py [--customers 100000] [--vouchers 1000000] [--keep]
       [--second-size-divisor 10]
Needs the local stack (``python -m stack.cli up``) and matplotlib (the ``bench`` extra). The
subprocesses are stopped and the scratch database, indices (``breindex_*``) and Redis keys
(``breindex:*``) removed at the end, also after an error or Ctrl-C; ``--keep`` keeps the
data of the last size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
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
    free_port,
    log,
    percentile,
    plot_reads_per_second,
    seeded_database,
    tail,
    unwind_on_sigterm,
    wait_api_ready,
)

from cache.config import es_hosts
from cache.readmodel.keys import KeyLayout
from indexer.reindex_state import CheckpointStore, Phase
from indexer.seed_rows import SeedPlan
from indexer.settings import IndexerSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT = REPO_ROOT / "bench" / "out"
ES_PREFIX = "breindex_"
REDIS_PREFIX = "breindex:"
SLOT = "breindex_slot"
PUBLICATION = "breindex_pub"
APP_ID = "breindex_app"
TOKEN = "breindex-token-not-secret"
# api_keys.rate_limit_per_minute is an int: the largest, so the reader is never throttled.
NO_LIMIT = 2**31 - 1
SAMPLE_SECONDS = 0.5
SMOOTH_SECONDS = 5.0
# The checkpoint's phase is read this often, so the end of the load is known to within it
# (a load of a tenth of the default size takes a few seconds).
PHASE_POLL_SECONDS = 0.1
GOAL_POSTGRES_DOCS = 20_000
GOAL_INDEX_DOCS = 50_000
GOAL_RSS_MIB = 500
SOURCES = ("postgres", "index")


def env_for(dsn: str) -> dict[str, str]:
    return bench_env(
        dsn, es_prefix=ES_PREFIX, redis_prefix=REDIS_PREFIX, slot=SLOT, publication=PUBLICATION
    )


def rss_mib(pid: int) -> float | None:
    """The process's resident set now (``VmRSS``), to see growth over time; None once gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return None


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The structured log lines of a log file; anything else (a print, a traceback) skipped."""
    lines: list[dict[str, Any]] = []
    for text in path.read_text(errors="replace").splitlines():
        if text.startswith("{"):
            try:
                lines.append(json.loads(text))
            except ValueError:
                continue
    return lines


def log_time(line: dict[str, Any]) -> float:
    """A log line's ``ts`` (UTC, ms) as seconds since the epoch."""
    return datetime.strptime(line["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


# -- the data ------------------------------------------------------------------------------


@dataclass
class Targets:
    """Existing objects of the benchmark key's project the reader and the writer use."""

    project_id: str
    voucher_codes: list[str]
    voucher_ids: list[str]
    customer_ids: list[str]


def prepare(dsn: str, sample: int) -> Targets:
    """The benchmark key (inserted before the indexer starts, so its initial load carries
    it to Redis) and a random sample of existing vouchers and customers."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT id FROM projects ORDER BY id LIMIT 1").fetchone()
        assert row is not None, "the seed made no project"
        project_id = str(row[0])
        conn.execute(
            "INSERT INTO api_keys (id, project_id, token_sha256, rate_limit_per_minute) "
            "VALUES (%s, %s, %s, %s)",
            (APP_ID, project_id, hashlib.sha256(TOKEN.encode()).hexdigest(), NO_LIMIT),
        )
        vouchers = conn.execute(
            "SELECT id, code FROM vouchers WHERE project_id = %s ORDER BY random() LIMIT %s",
            (project_id, sample),
        ).fetchall()
        customers = conn.execute(
            "SELECT id FROM customers WHERE project_id = %s ORDER BY random() LIMIT %s",
            (project_id, sample),
        ).fetchall()
    return Targets(
        project_id,
        voucher_codes=[str(code) for _, code in vouchers],
        voucher_ids=[str(voucher_id) for voucher_id, _ in vouchers],
        customer_ids=[str(customer_id) for (customer_id,) in customers],
    )


def wait_for_initial_load(process: subprocess.Popen[bytes], log_path: Path) -> dict[str, Any]:
    """The indexer's "initial load complete" line (rows, seconds, rows_per_second)."""
    while True:
        for line in json_lines(log_path):
            if line.get("msg") == "initial load complete":
                return line
        if process.poll() is not None:
            raise RuntimeError(f"indexer run exited early:\n{tail(log_path)}")
        time.sleep(0.5)


# -- the load on the read API and the source ------------------------------------------------


@dataclass(slots=True)
class Request:
    at: float  # seconds since the measurement's start, when sent
    latency_ms: float
    status: int  # 0: no answer (connection refused or reset, timeout)
    route: str


def is_error(status: int) -> bool:
    # Every lookup is of an object that exists and no list can be missing: a 404 is an error.
    return status == 0 or status == 404 or status >= 500


class Traffic:
    """The paced reader and the light writer, both running until ``stop``."""

    def __init__(self, port: int, dsn: str, targets: Targets, args: argparse.Namespace) -> None:
        self._base = f"http://127.0.0.1:{port}"
        self._dsn = dsn
        self._targets = targets
        self._connections: int = args.connections
        self._read_rate: float = args.read_rate
        self._write_rate: float = args.write_rate
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.requests: list[Request] = []
        self.writes = 0
        self.write_errors: list[str] = []
        self.t0 = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def start(self, t0: float) -> None:
        self.t0 = t0
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._connections),
            headers={"X-App-Id": APP_ID, "X-App-Token": TOKEN},
            timeout=aiohttp.ClientTimeout(total=30),
        )
        self._tasks = [
            asyncio.create_task(self._reader(self._session, number))
            for number in range(self._connections)
        ]
        self._tasks.append(asyncio.create_task(self._writer()))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _path(self, rng: random.Random) -> tuple[str, str]:
        targets = self._targets
        pick = rng.random()
        if pick < 0.5:
            return "voucher", f"/v1/vouchers/{rng.choice(targets.voucher_codes)}"
        if pick < 0.8:
            return "customer", f"/v1/customers/{rng.choice(targets.customer_ids)}"
        if pick < 0.9:
            return "voucher list", "/v1/vouchers?limit=10"
        return "customer list", "/v1/customers?limit=10"

    async def _reader(self, session: aiohttp.ClientSession, number: int) -> None:
        rng = random.Random(number)
        # Paced rather than as fast as possible: the point is the latency a steady load sees
        # while the reindex runs, not how much of the two cores the reader can take from it.
        interval = self._connections / self._read_rate
        next_at = time.perf_counter() + rng.random() * interval
        while not self._stop.is_set():
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            # A late request does not make the next ones burst to catch up.
            next_at = max(next_at + interval, time.perf_counter())
            route, path = self._path(rng)
            sent = time.perf_counter()
            try:
                async with session.get(self._base + path) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            done = time.perf_counter()
            self.requests.append(Request(sent - self.t0, (done - sent) * 1000, status, route))

    async def _writer(self) -> None:
        rng = random.Random(-1)
        interval = 1 / self._write_rate
        ids = self._targets.voucher_ids
        async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                try:
                    await conn.execute(
                        "UPDATE vouchers SET metadata = metadata || jsonb_build_object("
                        "'bench_touch', %s::int), updated_at = now() WHERE id = %s",
                        (self.writes, rng.choice(ids)),
                    )
                    self.writes += 1
                except psycopg.Error as error:
                    self.write_errors.append(str(error))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), interval)


def read_stats(requests: list[Request], start: float, end: float) -> dict[str, Any]:
    """Requests sent in ``[start, end)``: count, errors, other non-2xx, p50 and p99."""
    window = [r for r in requests if start <= r.at < end]
    latencies = sorted(r.latency_ms for r in window)
    statuses = Counter(r.status for r in window)
    return {
        "start": start,
        "end": end,
        "requests": len(window),
        "per_second": len(window) / (end - start) if end > start else 0.0,
        "errors": sum(count for status, count in statuses.items() if is_error(status)),
        "other_non_2xx": sum(
            count
            for status, count in statuses.items()
            if not is_error(status) and not 200 <= status < 300
        ),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "errors_by_route": dict(Counter(r.route for r in window if is_error(r.status))),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


def per_second(requests: list[Request]) -> list[dict[str, Any]]:
    buckets: dict[int, list[Request]] = {}
    for request in requests:
        buckets.setdefault(int(request.at), []).append(request)
    series = []
    for second in sorted(buckets):
        latencies = sorted(r.latency_ms for r in buckets[second])
        series.append(
            {
                "second": second,
                "requests": len(latencies),
                "errors": sum(1 for r in buckets[second] if is_error(r.status)),
                "p50_ms": percentile(latencies, 50),
                "p99_ms": percentile(latencies, 99),
            }
        )
    return series


# -- one reindex -----------------------------------------------------------------------------


@dataclass
class ReindexRun:
    source: str
    status: int = -1
    started: float = 0.0  # seconds since the measurement's start: the process started
    load_started: float | None = None  # its "reindex started" line
    load_ended: float | None = None  # the checkpoint's phase moved to catching_up
    switched: float | None = None  # the voucher alias seen behind a new index (sampled)
    switch_logged: float | None = None  # its "reindex switched the aliases" line
    ended: float = 0.0  # the process exited
    rows_loaded: int = 0
    rows_read: int | None = None  # as its "reindex complete" line says
    peak_rss_mib: float = 0.0
    old_index: str | None = None
    new_index: str | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    log_tail: str | None = None

    @property
    def load_seconds(self) -> float | None:
        if self.load_started is None or self.load_ended is None:
            return None
        return self.load_ended - self.load_started

    @property
    def load_docs_per_second(self) -> float | None:
        seconds = self.load_seconds
        return self.rows_loaded / seconds if seconds else None

    @property
    def wall_seconds(self) -> float:
        return self.ended - self.started

    @property
    def end_to_end_docs_per_second(self) -> float:
        rows = self.rows_read if self.rows_read is not None else self.rows_loaded
        return rows / self.wall_seconds if self.wall_seconds else 0.0

    def figures(self) -> dict[str, Any]:
        figures = asdict(self)
        figures.update(
            load_seconds=self.load_seconds,
            load_docs_per_second=self.load_docs_per_second,
            wall_seconds=self.wall_seconds,
            end_to_end_docs_per_second=self.end_to_end_docs_per_second,
            rss_mib_by_stage=self.rss_by_stage(),
        )
        return figures

    def rss_by_stage(self) -> dict[str, float]:
        """The highest sampled resident set per stage and phase: where the memory goes."""
        peaks: dict[str, float] = {}
        for sample in self.samples:
            if sample["stage"] is not None and sample["rss_mib"] is not None:
                key = f"{sample['stage']} {sample['phase']}"
                peaks[key] = max(peaks.get(key, 0.0), sample["rss_mib"])
        return peaks


async def serving_index(elastic: AsyncElasticsearch, alias: str) -> str | None:
    found = await elastic.options(ignore_status=404).indices.get_alias(name=alias)
    if found.meta.status == 404:
        return None
    names = list(found.body)
    return names[0] if len(names) == 1 else None


async def run_reindex(
    source: str,
    dsn: str,
    children: Children,
    elastic: AsyncElasticsearch,
    redis: aioredis.Redis,
    traffic: Traffic,
    indexer_pid: int,
    tag: str,
) -> ReindexRun:
    run = ReindexRun(source)
    checkpoints = CheckpointStore(redis, KeyLayout(REDIS_PREFIX).reindex_key)
    alias = f"{ES_PREFIX}vouchers"
    run.old_index = await serving_index(elastic, alias)
    log_path = OUT / f"reindex-{source}-{tag}.log"
    args = [sys.executable, "-m", "indexer.cli", "reindex", "--source", source]
    run.started = traffic.now()
    process = children.start(args, env_for(dsn), log_path)
    next_sample = run.started
    while True:
        # WNOHANG: returns at once; wait4 rather than poll() for the process's peak RSS.
        pid, wait_status, usage = os.wait4(process.pid, os.WNOHANG)  # noqa: ASYNC222
        now = traffic.now()
        state = await checkpoints.load()
        if run.load_ended is None and state is not None and state.phase is Phase.CATCHING_UP:
            run.load_ended, run.rows_loaded = now, state.rows_done
        if pid != 0 or now >= next_sample:
            index = await serving_index(elastic, alias)
            if run.switched is None and index is not None and index != run.old_index:
                run.switched, run.new_index = now, index
            run.samples.append(
                {
                    "t": now,
                    "rows_done": None if state is None else state.rows_done,
                    "phase": None if state is None else str(state.phase),
                    "stage": None if state is None else state.stage,
                    "voucher_index": index,
                    "rss_mib": rss_mib(process.pid),
                    "indexer_rss_mib": rss_mib(indexer_pid),
                }
            )
            next_sample += SAMPLE_SECONDS
        if pid != 0:
            process.returncode = os.waitstatus_to_exitcode(wait_status)
            run.status = process.returncode
            run.ended = now
            run.peak_rss_mib = usage.ru_maxrss / 1024
            break
        await asyncio.sleep(PHASE_POLL_SECONDS)
    wall_offset = time.time() - time.perf_counter() + traffic.t0
    for line in json_lines(log_path):
        if line.get("msg") == "reindex started":
            run.load_started = log_time(line) - wall_offset
        elif line.get("msg") == "reindex complete":
            run.rows_read = int(line["rows_read"])
            if run.load_ended is None:
                # Over between two polls (a tiny table): everything read was loaded.
                run.rows_loaded = run.rows_read
        elif line.get("msg") == "reindex switched the aliases":
            run.switch_logged = log_time(line) - wall_offset
            if run.load_ended is None:
                # The load's end was not seen: the catch-up ended before the switch, so
                # this bounds it from above (the figure errs low).
                run.load_ended = run.switch_logged
    if run.status != 0:
        run.log_tail = tail(log_path)
        log(f"reindex --source {source} exited with {run.status}:\n{run.log_tail}")
        abort = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "indexer.cli", "reindex", "--abort"],
            cwd=REPO_ROOT,
            env=env_for(dsn),
            capture_output=True,
            text=True,
            check=False,
        )
        log(f"reindex --abort: {abort.stdout.strip()} {abort.stderr.strip()}")
    return run


# -- one size --------------------------------------------------------------------------------


async def measure(
    args: argparse.Namespace,
    dsn: str,
    targets: Targets,
    children: Children,
    settings: IndexerSettings,
    indexer_pid: int,
    tag: str,
) -> dict[str, Any]:
    port = free_port()
    api_log = OUT / f"reindex-readapi-{tag}.log"
    api = children.start(
        [
            sys.executable,
            "-m",
            "readapi.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(args.api_workers),
            "--log-level",
            "WARNING",
        ],
        env_for(dsn),
        api_log,
    )
    await wait_api_ready(port, api, api_log)
    elastic = AsyncElasticsearch(es_hosts(settings.es_url))
    redis = aioredis.Redis.from_url(settings.redis_url)
    traffic = Traffic(port, dsn, targets, args)
    runs: list[ReindexRun] = []
    alone: list[ReindexRun] = []
    windows: dict[str, tuple[float, float]] = {}
    try:
        traffic.start(time.perf_counter())
        log(f"reads and writes, quiet window of {args.quiet_seconds} s")
        await asyncio.sleep(args.quiet_seconds)
        windows["quiet"] = (0.0, traffic.now())
        for number, source in enumerate(SOURCES):
            if number:
                await asyncio.sleep(args.pause_seconds)
            log(f"indexer reindex --source {source}")
            run = await run_reindex(
                source, dsn, children, elastic, redis, traffic, indexer_pid, tag
            )
            runs.append(run)
            windows[source] = (run.started, run.ended)
            log(
                f"  exit {run.status}, {run.wall_seconds:.1f} s, {run.rows_loaded} rows loaded"
                f" in {run.load_seconds or float('nan'):.1f} s, peak RSS "
                f"{run.peak_rss_mib:.0f} MiB"
            )
        # Reads against the new generation for a while, for the plot.
        await asyncio.sleep(args.pause_seconds)
        await traffic.stop()
        # The same reindexes again with no reader and no writer (``indexer run`` idle): the
        # reindex's own pace on this machine, which the reads above share two cores with.
        for source in SOURCES:
            log(f"indexer reindex --source {source}, alone")
            run = await run_reindex(
                source, dsn, children, elastic, redis, traffic, indexer_pid, f"{tag}-alone"
            )
            alone.append(run)
            log(
                f"  exit {run.status}, {run.wall_seconds:.1f} s, "
                f"{run.end_to_end_docs_per_second:,.0f} d/s end to end, peak RSS "
                f"{run.peak_rss_mib:.0f} MiB"
            )
    finally:
        await traffic.stop()
        await elastic.close()
        await redis.aclose()
    if api.poll() is not None:
        log(f"readapi serve exited during the run:\n{tail(api_log)}")
    return {
        "reindexes": {run.source: run.figures() for run in runs},
        "alone": {run.source: run.figures() for run in alone},
        "reads": {
            name: read_stats(traffic.requests, start, end) for name, (start, end) in windows.items()
        },
        "reads_per_second": per_second(traffic.requests),
        "writes": traffic.writes,
        "write_errors": traffic.write_errors[:10],
        "indexer_alive": rss_mib(indexer_pid) is not None,
    }


def one_size(
    args: argparse.Namespace, settings: IndexerSettings, customers: int, vouchers: int
) -> dict[str, Any]:
    children = Children()
    try:
        asyncio.run(clean_sinks(settings.es_url, settings.redis_url, ES_PREFIX, REDIS_PREFIX))
        log(f"seeding {customers} customers, {vouchers} vouchers")
        plan = SeedPlan(customers=customers, vouchers=vouchers)
        dsn, _ = seeded_database(args.dsn, args.database, plan)
        targets = prepare(dsn, args.sample)
        OUT.mkdir(parents=True, exist_ok=True)
        log("indexer run: initial load (baseline)")
        indexer_log = OUT / f"reindex-indexer-{vouchers}.log"
        indexer = children.start(
            [sys.executable, "-m", "indexer.cli", "run", "--log-level", "INFO"],
            env_for(dsn),
            indexer_log,
        )
        initial = wait_for_initial_load(indexer, indexer_log)
        log(f"  {initial['rows']} rows in {initial['seconds']} s")
        # Log file names carry the size: the second size would overwrite the first's.
        result = asyncio.run(
            measure(args, dsn, targets, children, settings, indexer.pid, str(vouchers))
        )
        if indexer.poll() is not None:
            log(f"indexer run exited during the run:\n{tail(indexer_log)}")
        errors = [line for line in json_lines(indexer_log) if line.get("level") == "error"]
        return {
            "customers": customers,
            "vouchers": vouchers,
            "initial_load": {
                "rows": int(initial["rows"]),
                "seconds": float(initial["seconds"]),
                "rows_per_second": int(initial["rows"]) / float(initial["seconds"]),
            },
            "indexer_error_lines": errors[:10],
            **result,
        }
    finally:
        children.stop_all()
        if not args.keep:
            log("clean-up: scratch database, indices, keys")
            drop_database(args.dsn, args.database)
            asyncio.run(clean_sinks(settings.es_url, settings.redis_url, ES_PREFIX, REDIS_PREFIX))


# -- the report ------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "" if ok is None else "ok" if ok else "MISSED"


def print_size(result: dict[str, Any]) -> None:
    initial = result["initial_load"]
    print()
    print(
        f"{result['customers']} customers / {result['vouchers']} vouchers: "
        f"{initial['rows']:,} rows; {result['writes']} voucher updates during the run"
    )
    print(f"  {'':<44}{'figure':>16}  {'goal':<12}")
    print(f"  {'initial load (indexer run), baseline':<44}{initial['rows_per_second']:>11,.0f} r/s")
    goals = {"postgres": GOAL_POSTGRES_DOCS, "index": GOAL_INDEX_DOCS}
    for source, run in result["reindexes"].items():
        load = run["load_docs_per_second"]
        load_text = "n/a" if load is None else f"{load:,.0f}"
        goal = goals[source]
        print(
            f"  {f'reindex --source {source}, load':<44}{load_text:>11} d/s  "
            f"{f'>= {goal:,}':<12}{verdict(None if load is None else load >= goal)}"
        )
        load_seconds = run["load_seconds"]
        seconds = "n/a" if load_seconds is None else f"{load_seconds:.1f}"
        print(f"  {'  rows loaded, load seconds':<44}{run['rows_loaded']:>11,}  {seconds} s")
        print(
            f"  {'  end to end (process start to exit)':<44}"
            f"{run['end_to_end_docs_per_second']:>11,.0f} d/s  ({run['wall_seconds']:.1f} s)"
        )
        rss = run["peak_rss_mib"]
        print(
            f"  {'  peak RSS':<44}{rss:>11,.0f} MiB  {f'< {GOAL_RSS_MIB}':<12}"
            f"{verdict(rss < GOAL_RSS_MIB)}"
        )
        switched = run["switched"]
        switch_text = "not seen" if switched is None else f"{switched - run['started']:.1f} s in"
        print(f"  {'  exit status, alias switch':<44}{run['status']:>11}  {switch_text}")
    for source, run in result.get("alone", {}).items():
        rate = run["end_to_end_docs_per_second"]
        goal = goals[source]
        print(
            f"  {f'reindex --source {source} alone, end to end':<44}{rate:>11,.0f} d/s  "
            f"{f'>= {goal:,}':<12}{verdict(rate >= goal)}"
        )
        rss = run["peak_rss_mib"]
        print(f"  {'  peak RSS, exit status':<44}{rss:>11,.0f} MiB  status {run['status']}")
    print(
        f"  {'reads':<26}{'requests':>10}{'req/s':>7}{'errors':>8}{'non-2xx':>9}{'p50 ms':>9}"
        f"{'p99 ms':>9}"
        f"  goal"
    )
    labels = {
        "quiet": "quiet window (baseline)",
        "postgres": "during --source postgres",
        "index": "during --source index",
    }
    for name, stats in result["reads"].items():
        print(
            f"  {labels[name]:<26}{stats['requests']:>10}{stats['per_second']:>7.0f}"
            f"{stats['errors']:>8}"
            f"{stats['other_non_2xx']:>9}{stats['p50_ms']:>9.2f}{stats['p99_ms']:>9.2f}"
            f"  0 errors {verdict(stats['errors'] == 0)}"
        )


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (docs_ax, read_ax) = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    colours = {"postgres": "tab:blue", "index": "tab:green"}
    for source, run in result["reindexes"].items():
        colour = colours[source]
        points = [(s["t"], s["rows_done"]) for s in run["samples"] if s["rows_done"] is not None]
        times, rates = [], []
        for (t1, r1), (t2, r2) in itertools.pairwise(points):
            if t2 > t1 and r2 >= r1:
                times.append((t1 + t2) / 2)
                rates.append((r2 - r1) / (t2 - t1))
        # The checkpoint moves a page (2,000 rows) at a time, so the 0.5 s derivative is
        # spiky: a 5 s window over it shows the sustained rate.
        smooth_times, smooth_rates = [], []
        for index, (t2, r2) in enumerate(points):
            earlier = [(t1, r1) for t1, r1 in points[:index] if t2 - t1 <= SMOOTH_SECONDS]
            if earlier and t2 - earlier[0][0] >= SMOOTH_SECONDS - SAMPLE_SECONDS:
                t1, r1 = earlier[0]
                smooth_times.append(t2)
                smooth_rates.append((r2 - r1) / (t2 - t1))
        docs_ax.plot(times, rates, color=colour, linewidth=0.6, alpha=0.4)
        docs_ax.plot(
            smooth_times,
            smooth_rates,
            color=colour,
            linewidth=1.8,
            label=f"reindex --source {source} (5 s window; faint: 0.5 s)",
        )
        for ax in (docs_ax, read_ax):
            ax.axvspan(run["started"], run["ended"], color=colour, alpha=0.08)
            if run["switched"] is not None:
                ax.axvline(run["switched"], color=colour, linestyle="--", linewidth=1)
        if run["switched"] is not None:
            docs_ax.annotate(
                "alias switch",
                (run["switched"], 0),
                xytext=(4, 4),
                textcoords="offset points",
                color=colour,
                fontsize=8,
            )
    docs_ax.axhline(GOAL_POSTGRES_DOCS, color="tab:blue", linestyle=":", linewidth=0.8)
    docs_ax.axhline(GOAL_INDEX_DOCS, color="tab:green", linestyle=":", linewidth=0.8)
    docs_ax.set_ylim(bottom=0)
    docs_ax.set_ylabel("documents/s (checkpoint rows_done)")
    docs_ax.legend(loc="upper right")
    docs_ax.set_title(
        f"indexer reindex, {result['customers']:,} customers / {result['vouchers']:,} vouchers "
        f"(dotted: goals; dashed: alias switch)"
    )
    seconds = result["reads_per_second"]
    plot_reads_per_second(
        read_ax,
        seconds,
        failed_key="errors",
        failed_label="second with errors",
        xlabel="seconds since the reads started",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--vouchers", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=4, help="reader connections")
    parser.add_argument("--read-rate", type=float, default=200, help="reads per second, total")
    parser.add_argument("--write-rate", type=float, default=5, help="voucher updates per second")
    parser.add_argument("--quiet-seconds", type=float, default=10, help="baseline reads window")
    parser.add_argument("--pause-seconds", type=float, default=5, help="after each reindex")
    parser.add_argument("--api-workers", type=int, default=1, help="readapi serve --workers")
    parser.add_argument("--sample", type=int, default=5000, help="objects of each kind read")
    parser.add_argument("--dsn", default=IndexerSettings.from_env().pg_admin_dsn)
    parser.add_argument("--database", default="loyalty_bench_reindex")
    parser.add_argument("--keep", action="store_true", help="keep the last size's scratch data")
    parser.add_argument(
        "--second-size-divisor",
        type=int,
        default=10,
        help="the second size is the first divided by this (2: RSS at two large sizes)",
    )
    args = parser.parse_args()

    unwind_on_sigterm()
    settings = IndexerSettings.from_env()
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for customers, vouchers in (
        (args.customers, args.vouchers),
        (args.customers // args.second_size_divisor, args.vouchers // args.second_size_divisor),
    ):
        results.append(one_size(args, settings, customers, vouchers))
        (OUT / "reindex.json").write_text(json.dumps(results, indent=1, default=str))
    for result in results:
        print_size(result)
    largest = max(results, key=lambda r: r["vouchers"])
    plot(largest, OUT / "reindex.png")
    print()
    print(f"figures: {OUT / 'reindex.json'}; plot of the larger size: {OUT / 'reindex.png'}")


if __name__ == "__main__":
    main()
