"""Scaling out, side by side in one run: the change throughput of one indexer shard against
two (``LOYALTY_SHARD``, ``indexer reshard``), and the voucher lookup against one Redis
against a Redis Cluster (``bench/read.py``).

    python3 -m stack.cli up redis-cluster             # for the lookups (or --skip-lookups)
    PYTHONPATH=. python3 bench/scale.py               # 100,000 customers, 200,000 vouchers
    PYTHONPATH=. python3 bench/scale.py --customers 3000 --vouchers 10000 \\
        --burst-rows 5000 --skip-lookups              # quick

Setup: one scratch database (``--database``) on the server of ``--dsn``, migrated and seeded
once (``SeedPlan``) with ``--projects`` projects (6 campaigns and 4 segments each, as the
default plan has), so that each of two shards owns about half of them. Both shard runs use
that database, each with its own slot, publication, index prefix and Redis prefix: the
first run's slot, indices and keys are removed before the second starts, and before each
burst the two big tables are vacuumed and the server checkpointed, so both bursts start
from the same table state.

The burst (``bench/standby.py``'s): one writer commits ``--burst-rows`` UPDATEs of customers
and vouchers alternately, drawn across every project in a fixed order (the same rows in the
same order in both runs), ``--tx-rows`` per transaction. It is caught up when the combined
watermark in Redis (the least of the shards' positions) reaches the WAL position read after
its last COMMIT (polled every 20 ms). How many of its rows fall to each of two shards
(``indexer.shards.bucket``) is printed.

1. "1 shard": ``indexer run`` (shard 0/1) does the initial load (the watermark passes the
   WAL position read before it started); then the burst.
2. "2 shards": ``indexer run`` 0/1 does the initial load; ``indexer reshard --shards 2``
   makes the two shards' publications and slots and records the plan; the 0/1 process
   applies up to the handoff, drops its slot and exits 0 by itself; ``indexer run`` 0/2 and
   1/2 start, and once the combined watermark passes the WAL position read after the
   reshard, the same burst.
3. Lookups: ``bench/read.py --scenarios cold-l2,cluster-cold,random,cluster-random`` with
   ``--lookup-vouchers`` and ``--rounds``, its table printed again under a heading
   (``--skip-lookups``: not run). It makes and removes its own scratch data; this bench's
   is removed before it starts.

Printed per shard run: catch-up seconds (first BEGIN to caught up) and changed rows/s, the
writer's own seconds and the lag left after its last COMMIT, the CPU seconds each indexer
process used over the burst (``/proc/<pid>/stat``), how busy the whole machine was over it
(every core, ``/proc/stat``: the services run on it too), and the rows/s against one
shard's. Figures also go to ``bench/out/scale.json``; the indexers' logs to
``bench/out/scale-indexer-*.log``. Everything the bench made (database, slots, indices
``bscale_*``, keys ``bscale:*``) is removed at the end, also after an error or Ctrl-C,
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
import redis.asyncio as aioredis
from psycopg import sql
from scratchdb import (
    REPO_ROOT,
    Children,
    bench_env,
    clean_sinks,
    drop_database,
    dsn_for,
    log,
    seeded_database,
    stop_process,
    unwind_on_sigterm,
)
from standby import OWN, burst_ids, write_burst, write_lsn

from cache.connect import cluster_address
from cache.readmodel.keys import KeyLayout
from cache.store import CacheStore
from indexer.seed_rows import SeedPlan
from indexer.settings import IndexerSettings
from indexer.shards import ShardSpec, shards_of
from stack.config import StackConfig
from stack.redis_cluster import cluster_url

OUT = Path(__file__).resolve().parent / "out"
ES_PREFIX = "bscale_"
REDIS_PREFIX = "bscale:"
LOOKUP_SCENARIOS = "cold-l2,cluster-cold,random,cluster-random"
PROGRESS_SECONDS = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class StepFailed(RuntimeError):
    """A step of the bench did not happen in time or as expected: one line to print."""


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def cpu_seconds(pid: int) -> float:
    """User and system time of a process and its threads (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The fields after the command's closing parenthesis: state first, utime 12th, stime 13th.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time of every core neither idle nor waiting for I/O since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLOCK_TICKS


class Run:
    """One shard run's names: slot, publication, index and key prefixes, processes."""

    def __init__(self, label: str, name: str, dsn: str, settings: IndexerSettings) -> None:
        self.label = label
        self.name = name
        self.dsn = dsn
        self.slot = f"bscale_{name}"
        self.env = bench_env(
            dsn, es_prefix=f"{ES_PREFIX}{name}_", redis_prefix=f"{REDIS_PREFIX}{name}:",
            slot=self.slot, publication=f"bscale_pub_{name}",
        )
        self.redis = aioredis.Redis.from_url(settings.redis_url)
        self.store = CacheStore(self.redis, KeyLayout(f"{REDIS_PREFIX}{name}:"))
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, spec: ShardSpec, children: Children) -> subprocess.Popen[bytes]:
        shard = str(spec)
        log_path = OUT / f"scale-indexer-{self.name}-{spec.index}of{spec.count}.log"
        process = children.start(
            [sys.executable, "-m", "indexer.cli", "run", "--log-level", "INFO"],
            {**self.env, "LOYALTY_SHARD": shard},
            log_path,
        )
        self.processes[shard] = process
        self.logs[shard] = log_path
        log(f"[{self.label}] indexer run, shard {shard} (pid {process.pid}, log {log_path})")
        return process

    def exited(self, shard: str) -> str:
        process = self.processes[shard]
        return (
            f"[{self.label}] indexer shard {shard} exited with status {process.returncode} "
            f"(log: {self.logs[shard]})"
        )

    async def wait_watermark(self, lsn: int, within: float, what: str) -> float:
        """Until the combined watermark reaches ``lsn``; returns when (perf_counter)."""
        started = time.monotonic()
        note_at = started + PROGRESS_SECONDS
        while True:
            watermark = await self.store.get_watermark()
            if watermark is not None and watermark >= lsn:
                return time.perf_counter()
            for shard, process in self.processes.items():
                if process.poll() is not None:
                    raise StepFailed(f"{what}: {self.exited(shard)}")
            now = time.monotonic()
            where = (
                "no watermark yet" if watermark is None
                else f"{(lsn - watermark) / 1024:,.0f} kB of WAL behind"
            )
            if now - started > within:
                raise StepFailed(
                    f"[{self.label}] {what}: the watermark did not reach {lsn_text(lsn)} in "
                    f"{within:.0f} s ({where}; logs: {', '.join(map(str, self.logs.values()))})"
                )
            if now >= note_at:
                log(f"[{self.label}]   {what}: {where} after {now - started:.0f} s")
                note_at += PROGRESS_SECONDS
            await asyncio.sleep(0.02)

    async def wait_exit(self, shard: str, within: float) -> None:
        """Until the process of ``shard`` exits by itself, with status 0."""
        process = self.processes[shard]
        started = time.monotonic()
        note_at = started + PROGRESS_SECONDS
        while process.poll() is None:
            now = time.monotonic()
            if now - started > within:
                raise StepFailed(
                    f"[{self.label}] indexer shard {shard} did not hand off and exit in "
                    f"{within:.0f} s (log: {self.logs[shard]})"
                )
            if now >= note_at:
                log(f"[{self.label}]   waiting for shard {shard} to hand off and exit: "
                    f"{now - started:.0f} s")
                note_at += PROGRESS_SECONDS
            await asyncio.sleep(0.2)
        if process.returncode != 0:
            raise StepFailed(f"after the reshard: {self.exited(shard)}")
        log(f"[{self.label}]   shard {shard} handed off and exited 0 after "
            f"{time.monotonic() - started:.1f} s")

    async def initial_load(self, children: Children, within: float) -> None:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            before = await write_lsn(conn)
        self.start(ShardSpec(0, 1), children)
        loaded = time.perf_counter()
        await self.wait_watermark(before, within, "initial load")
        log(f"[{self.label}]   initial load done in {time.perf_counter() - loaded:.1f} s")

    def reshard(self, shards: int, within: float) -> None:
        log(f"[{self.label}] indexer reshard --shards {shards}")
        try:
            done = subprocess.run(
                [sys.executable, "-m", "indexer.cli", "reshard", "--shards", str(shards),
                 "--dsn", self.dsn],
                cwd=REPO_ROOT, env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
                text=True, timeout=within, check=False,
            )
        except subprocess.TimeoutExpired:
            raise StepFailed(
                f"[{self.label}] indexer reshard did not finish in {within:.0f} s"
            ) from None
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise StepFailed(f"[{self.label}] indexer reshard failed ({done.returncode}): "
                             f"{reason}")
        for line in done.stdout.splitlines():
            log(f"[{self.label}]   {line}")

    async def close(self, admin_dsn: str) -> None:
        await self.redis.aclose()
        names = [self.slot, *(spec.slot_name(self.slot) for spec in shards_of(2))]
        with psycopg.connect(dsn_for(admin_dsn, "postgres"), autocommit=True) as admin:
            admin.execute(
                OWN + "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = ANY(%s) AND NOT active",
                (names,),
            )


def settle(dsn: str) -> None:
    """The burst's tables vacuumed and the server checkpointed: both runs' bursts start from
    the same table state, and both pay the full-page writes of their first touch of a page."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(OWN + "VACUUM (ANALYZE) customers, vouchers")
        try:
            conn.execute(OWN + "CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            log("  (no CHECKPOINT: the admin DSN may not run it)")


async def timed_burst(
    run: Run, args: argparse.Namespace, pairs: list[tuple[str, str]], mark: int
) -> dict[str, Any]:
    """The burst against the shards running in ``run``, caught up; its figures."""
    settle(run.dsn)
    pids = {shard: process.pid for shard, process in run.processes.items()
            if process.poll() is None}
    cpu_before = {shard: cpu_seconds(pid) for shard, pid in pids.items()}
    busy_before = machine_busy_seconds()
    log(f"[{run.label}] burst: {len(pairs):,} rows in transactions of {args.tx_rows}")
    began, committed, target = await write_burst(run.dsn, pairs, args.tx_rows, mark)
    caught_up = await run.wait_watermark(target, args.timeout, "burst catch-up")
    busy = machine_busy_seconds() - busy_before
    cpu = {shard: cpu_seconds(pid) - cpu_before[shard] for shard, pid in pids.items()}
    seconds = caught_up - began
    log(f"[{run.label}]   caught up {seconds:.2f} s after the first BEGIN "
        f"({caught_up - committed:.2f} s after the last COMMIT)")
    return {
        "run": run.label,
        "shards": len(pids),
        "rows": len(pairs),
        "catch_up_seconds": seconds,
        "rows_per_second": len(pairs) / seconds,
        "writer_seconds": committed - began,
        "lag_after_commit_seconds": caught_up - committed,
        "indexer_cpu_seconds": cpu,
        # Clock ticks are counted per core and rounded: a saturated machine may show 100.1%.
        "machine_busy": min(1.0, busy / (seconds * (os.cpu_count() or 1))),
    }


async def one_shard(
    args: argparse.Namespace, settings: IndexerSettings, dsn: str,
    pairs: list[tuple[str, str]], children: Children,
) -> dict[str, Any]:
    run = Run("1 shard", "one", dsn, settings)
    try:
        log(f"[{run.label}] initial load")
        await run.initial_load(children, args.timeout)
        return await timed_burst(run, args, pairs, 1)
    finally:
        children.stop_all()
        await run.close(args.dsn)


async def two_shards(
    args: argparse.Namespace, settings: IndexerSettings, dsn: str,
    pairs: list[tuple[str, str]], children: Children,
) -> dict[str, Any]:
    run = Run("2 shards", "two", dsn, settings)
    try:
        log(f"[{run.label}] initial load by shard 0/1")
        await run.initial_load(children, args.timeout)
        run.reshard(2, args.timeout)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            after = await write_lsn(conn)
        await run.wait_exit("0/1", args.timeout)
        del run.processes["0/1"]
        for spec in shards_of(2):
            run.start(spec, children)
        started = time.perf_counter()
        await run.wait_watermark(after, args.timeout, "shards 0/2 and 1/2 past the reshard")
        log(f"[{run.label}]   both shards past {lsn_text(after)} after "
            f"{time.perf_counter() - started:.1f} s")
        return await timed_burst(run, args, pairs, 2)
    finally:
        children.stop_all()
        await run.close(args.dsn)


def burst_split(dsn: str, pairs: list[tuple[str, str]], count: int) -> dict[str, Any]:
    """How many burst rows, and of how many projects, each of ``count`` shards owns."""
    project_of: dict[str, str] = {}
    with psycopg.connect(dsn) as conn:
        for table in ("customers", "vouchers"):
            ids = [object_id for name, object_id in pairs if name == table]
            for object_id, project_id in conn.execute(
                sql.SQL(OWN + "SELECT id, project_id FROM {} WHERE id = ANY(%s)").format(
                    sql.Identifier(table)
                ),
                (ids,),
            ).fetchall():
                project_of[str(object_id)] = str(project_id)
    split: dict[str, Any] = {}
    for spec in shards_of(count):
        owned = [object_id for _, object_id in pairs if spec.owns(project_of[object_id])]
        projects = {project_of[object_id] for object_id in owned}
        split[str(spec)] = {"rows": len(owned), "projects": len(projects)}
    split["projects"] = len(set(project_of.values()))
    return split


def shard_runs(
    args: argparse.Namespace,
    settings: IndexerSettings,
    children: Children,
    runs: list[dict[str, Any]],
    split: dict[str, Any],
) -> None:
    """The scratch database seeded, the two shard runs, the scratch data removed (unless
    ``--keep``); each run's figures appended to ``runs`` as it ends (a failed second run
    leaves the first's), the burst's split over two shards put in ``split``."""
    try:
        asyncio.run(clean_sinks(settings.es_url, settings.redis_url, ES_PREFIX, REDIS_PREFIX))
        log(f"seeding {args.customers:,} customers, {args.vouchers:,} vouchers over "
            f"{args.projects} projects")
        plan = SeedPlan(
            projects=args.projects, customers=args.customers, vouchers=args.vouchers,
            redemptions=args.vouchers // 2, campaigns=6 * args.projects,
            segments=4 * args.projects,
        )
        dsn, _ = seeded_database(args.dsn, args.database, plan)
        pairs = burst_ids(dsn, args.burst_rows)
        split.update(burst_split(dsn, pairs, 2))
        log(f"burst: {len(pairs):,} rows of {split['projects']} projects; over 2 shards: "
            + ", ".join(f"{shard} {split[shard]['rows']:,} rows ({split[shard]['projects']} "
                        f"projects)" for shard in ("0/2", "1/2")))
        runs.append(asyncio.run(one_shard(args, settings, dsn, pairs, children)))
        if not args.keep:
            # The first run's indices and keys would only weigh on the services.
            asyncio.run(clean_sinks(
                settings.es_url, settings.redis_url, f"{ES_PREFIX}one_", f"{REDIS_PREFIX}one:"
            ))
        runs.append(asyncio.run(two_shards(args, settings, dsn, pairs, children)))
    finally:
        children.stop_all()
        if not args.keep:
            log("clean-up: scratch database, slots, indices, keys")
            drop_database(dsn_for(args.dsn, "postgres"), args.database)
            asyncio.run(clean_sinks(settings.es_url, settings.redis_url, ES_PREFIX, REDIS_PREFIX))


def check_cluster(url: str) -> None:
    """The first node of the Redis Cluster answers a TCP connection (before the shard runs,
    so that a missing cluster is told at once)."""
    try:
        host, port = cluster_address(url).nodes[0]
    except ValueError as error:
        raise StepFailed(f"--redis-cluster-url: {error}") from None
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        raise StepFailed(
            f"no Redis Cluster at {host}:{port}: start it with `python3 -m stack.cli up "
            f"redis-cluster`, or pass --skip-lookups"
        ) from None


def lookups(args: argparse.Namespace) -> str:
    """``bench/read.py`` on one Redis and on the cluster; its printed table (its progress
    goes to stderr as it runs)."""
    command = [
        sys.executable, str(REPO_ROOT / "bench" / "read.py"),
        "--scenarios", LOOKUP_SCENARIOS,
        "--vouchers", str(args.lookup_vouchers),
        "--rounds", str(args.rounds),
    ]
    if args.redis_cluster_url:
        command += ["--redis-cluster-url", args.redis_cluster_url]
    log(f"lookups: bench/read.py --scenarios {LOOKUP_SCENARIOS} --vouchers "
        f"{args.lookup_vouchers} --rounds {args.rounds}")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=args.lookup_timeout)
    except subprocess.TimeoutExpired:
        raise StepFailed(
            f"bench/read.py did not finish in {args.lookup_timeout:.0f} s"
        ) from None
    finally:
        # SIGTERM: it removes its scratch data on the way out.
        stop_process(process, timeout=120)
    if process.returncode != 0:
        raise StepFailed(f"bench/read.py exited with status {process.returncode}")
    return output


def print_shards(runs: list[dict[str, Any]], split: Mapping[str, Any]) -> None:
    base = runs[0]["rows_per_second"]
    header = (
        f"{'run':<10}{'shards':>7}{'burst rows':>12}{'catch-up s':>12}{'rows/s':>10}"
        f"{'ratio':>8}{'writer s':>10}{'lag after COMMIT s':>20}  "
        f"{'indexer CPU s (per shard)':<28}{'machine busy':>12}"
    )
    print()
    print("Change throughput: 1 indexer shard against 2 (catch-up from the burst's first "
          "BEGIN)")
    print(header)
    for run in runs:
        cpu = run["indexer_cpu_seconds"]
        cpu_text = " + ".join(f"{cpu[shard]:.1f}" for shard in sorted(cpu))
        if len(cpu) > 1:
            cpu_text += f" = {sum(cpu.values()):.1f}"
        print(
            f"{run['run']:<10}{run['shards']:>7}{run['rows']:>12,}"
            f"{run['catch_up_seconds']:>12.2f}{run['rows_per_second']:>10,.0f}"
            f"{run['rows_per_second'] / base:>7.2f}x{run['writer_seconds']:>10.2f}"
            f"{run['lag_after_commit_seconds']:>20.2f}  {cpu_text:<28}"
            f"{run['machine_busy']:>12.0%}"
        )
    print(
        "burst rows per shard of 2: "
        + ", ".join(f"{shard} {split[shard]['rows']:,} ({split[shard]['projects']} projects)"
                    for shard in ("0/2", "1/2"))
        + f"; {split['projects']} projects in the burst"
    )
    print(f"machine busy: CPU time of all {os.cpu_count()} cores over the catch-up, "
          "Postgres, Redis, Elasticsearch and the writer included")
    if len(runs) > 1:
        two = runs[1]
        if two["machine_busy"] >= 0.9:
            print("note: the machine was busy for 90% or more of the 2-shard catch-up: the "
                  "cores, not the shard count, set its pace")
        if two["lag_after_commit_seconds"] < 0.2 * two["catch_up_seconds"]:
            print("note: the 2-shard catch-up ended soon after the writer's last COMMIT: it "
                  "measures the writer as much as the indexers (raise --burst-rows)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/scale.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    settings = IndexerSettings.from_env()
    parser.add_argument("--dsn", default=settings.pg_admin_dsn,
                        help="admin DSN of the Postgres server (default $LOYALTY_PG_ADMIN_DSN "
                        "or the local stack's)")
    parser.add_argument("--database", default="loyalty_bench_scale",
                        help="scratch database (default %(default)s)")
    parser.add_argument("--projects", type=int, default=64,
                        help="projects the seed spreads its rows over (default %(default)s)")
    parser.add_argument("--customers", type=int, default=100_000,
                        help="customers (default %(default)s)")
    parser.add_argument("--vouchers", type=int, default=200_000,
                        help="vouchers (default %(default)s)")
    parser.add_argument("--burst-rows", type=int, default=100_000,
                        help="rows the burst updates (default %(default)s)")
    parser.add_argument("--tx-rows", type=int, default=500,
                        help="rows per transaction (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds to wait for each step of a shard run (default "
                        "%(default)s)")
    parser.add_argument("--skip-lookups", action="store_true",
                        help="do not run the lookups (bench/read.py)")
    parser.add_argument("--skip-shards", action="store_true",
                        help="run the lookups only")
    parser.add_argument("--lookup-vouchers", type=int, default=200_000,
                        help="vouchers bench/read.py seeds (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of bench/read.py (default %(default)s)")
    parser.add_argument("--redis-cluster-url", default=None,
                        help="the Redis Cluster of the lookups (default bench/read.py's: the "
                        "local stack's, `stack up redis-cluster`)")
    parser.add_argument("--lookup-timeout", type=float, default=3600,
                        help="seconds bench/read.py may take (default %(default)s)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch data of the shard runs")
    args = parser.parse_args(argv)
    if args.skip_lookups and args.skip_shards:
        parser.error("--skip-lookups and --skip-shards leave nothing to run")
    if args.projects < 2:
        parser.error("--projects must be at least 2: two shards need projects to share")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    unwind_on_sigterm()
    settings = IndexerSettings.from_env()
    OUT.mkdir(parents=True, exist_ok=True)
    children = Children()
    figures: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    split: dict[str, Any] = {}
    lookup_table: str | None = None
    try:
        if not args.skip_lookups:
            check_cluster(
                args.redis_cluster_url or cluster_url(StackConfig.from_env().redis_cluster_ports)
            )
        if not args.skip_shards:
            figures.update(shard_runs=runs, burst_split=split)
            shard_runs(args, settings, children, runs, split)
        if not args.skip_lookups:
            lookup_table = lookups(args)
            figures["lookups"] = lookup_table
    except StepFailed as error:
        print(f"bench/scale.py: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        children.stop_all()
        if runs or "lookups" in figures:
            (OUT / "scale.json").write_text(json.dumps(figures, indent=2))
        if runs:
            print_shards(runs, split)
    if lookup_table is not None:
        print()
        print(f"Lookups: one Redis against a Redis Cluster (bench/read.py --scenarios "
              f"{LOOKUP_SCENARIOS} --vouchers {args.lookup_vouchers} --rounds {args.rounds})")
        print(lookup_table.strip("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
