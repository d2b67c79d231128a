"""Rebuild reads on the primary or on a standby: the same write burst applied twice by
``indexer run``, once reading the primary (the baseline) and once with
``LOYALTY_PG_STANDBY_DSN``; what each costs the primary and how fast each catches up.

    python3 -m stack.cli up postgres-standby
    PYTHONPATH=. python3 bench/standby.py            # 100,000 customers, 200,000 vouchers
    PYTHONPATH=. python3 bench/standby.py --customers 5000 --vouchers 20000 \\
        --burst-rows 10000                           # quick

Setup: a scratch database (``--database``) on the server of ``--dsn``, migrated and seeded
(``SeedPlan``), with ``pg_stat_statements``; the standby (``--standby-dsn``, the stack's on
port 5434) replicates it. For each run, ``indexer run`` starts as a child process with its
own slot, publication, index prefix and Redis prefix, and its initial load is waited for
(the watermark in Redis passes the WAL position read before it started). Then
``pg_stat_statements`` is reset for the scratch database on both servers, and one writer
commits ``--burst-rows`` changes as fast as Postgres takes them: UPDATEs of customers and
vouchers alternately (each row's ``metadata`` gains a counter), ``--tx-rows`` rows per
transaction, the same rows in the same order in both runs. The burst is caught up when the
watermark reaches the WAL position read after the last COMMIT (polled every 20 ms).

Printed side by side, per run: catch-up seconds and changed rows/s (from the first BEGIN to
caught up), the writer's own rows/s, the indexer's rebuild statements and their shared
blocks (hit + read) on the primary and on the standby (told apart by the name each named
query carries in a leading comment), every other statement of the indexer on the primary,
and the indexer's standby metrics (batches read from each server, fallbacks by reason, mean
wait for replay). Beside them, what the first run's initial load left in Redis: keys of each
kind and their mean ``MEMORY USAGE`` over a sample, summed into bytes per cached object.
Figures also go to ``bench/out/standby.json``. Everything the bench made
(database, slots, indices ``bstandby_*``, keys ``bstandby:*``) is removed at the end, also
after an error or Ctrl-C, unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import redis.asyncio as aioredis
from psycopg import sql
from scratchdb import (
    Children,
    bench_env,
    clean_sinks,
    drop_database,
    dsn_for,
    free_port,
    log,
    seeded_database,
    tail,
    unwind_on_sigterm,
)

from cache.readmodel.keys import KeyLayout
from cache.store import CacheStore
from indexer.seed_rows import SeedPlan
from indexer.settings import IndexerSettings
from indexer.source import REBUILD_QUERIES

OUT = Path(__file__).resolve().parent / "out"
ES_PREFIX = "bstandby_"
REDIS_PREFIX = "bstandby:"
DEFAULT_STANDBY_DSN = "postgresql://postgres:loyalty-admin-local@127.0.0.1:5434/postgres"
STATEMENTS = """
SELECT s.query, s.calls, s.shared_blks_hit + s.shared_blks_read
FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
WHERE d.datname = current_database()
"""
RESET = (
    "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database"
    " WHERE datname = current_database()), 0)"
)
# The bench's own statements carry this comment, so they are not counted as the indexer's.
OWN = "/* bench */ "


async def write_lsn(conn: psycopg.AsyncConnection[Any]) -> int:
    row = await (await conn.execute(OWN + "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")).fetchone()
    assert row is not None
    return int(row[0])


async def wait_for_watermark(
    store: CacheStore, lsn: int, within: float, process: subprocess.Popen[bytes]
) -> float:
    deadline = time.monotonic() + within
    while True:
        watermark = await store.get_watermark()
        if watermark is not None and watermark >= lsn:
            return time.perf_counter()
        if process.poll() is not None:
            raise RuntimeError(f"indexer run exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the watermark did not reach {lsn} in {within:.0f} s")
        await asyncio.sleep(0.02)


def statement_figures(dsn: str) -> dict[str, int]:
    """Calls and blocks of the rebuild's statements and of the indexer's others."""
    figures = {"rebuild_calls": 0, "rebuild_blocks": 0, "other_calls": 0, "other_blocks": 0}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for text, calls, blocks in conn.execute(OWN + STATEMENTS).fetchall():
            query = str(text)
            if query.startswith(OWN.strip()) or "pg_stat_statements" in query:
                continue
            named = query.startswith("/* ") and query[3:].split(" ", 1)[0] in REBUILD_QUERIES
            if named:
                figures["rebuild_calls"] += int(calls)
                figures["rebuild_blocks"] += int(blocks)
            elif query.startswith("/* "):
                figures["other_calls"] += int(calls)
                figures["other_blocks"] += int(blocks)
    return figures


def reset_statements(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(OWN + RESET)


def indexer_metrics(port: int) -> dict[str, float]:
    wanted = (
        "indexer_rebuild_reads_total",
        "indexer_standby_fallbacks_total",
        "indexer_standby_wait_seconds_sum",
        "indexer_standby_wait_seconds_count",
    )
    found: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(wanted):
                name, _, value = line.rpartition(" ")
                found[name] = float(value)
    return found


KEY_NAMES = {
    b"v": "voucher", b"c": "customer", b"m": "campaign", b"s": "segment",
    b"vc": "voucher code alias", b"cs": "customer source_id alias",
    b"sm": "segment membership", b"sc": "segment counters", b"ev": "segment events",
}


async def cache_footprint(redis: aioredis.Redis, prefix: str, sample: int = 2000) -> dict[str, Any]:
    """Keys of each kind under ``prefix`` and their mean ``MEMORY USAGE`` over a sample: what
    a million cached objects cost in Redis."""
    counts: dict[str, int] = {}
    sampled: dict[str, list[bytes]] = {}
    async for key in redis.scan_iter(match=f"{prefix}{{*", count=5000):
        _, _, rest = key.partition(b"}:")
        name = KEY_NAMES.get(rest.partition(b":")[0], "other")
        counts[name] = counts.get(name, 0) + 1
        keys = sampled.setdefault(name, [])
        if len(keys) < sample:
            keys.append(key)
    footprint: dict[str, Any] = {}
    for name, keys in sampled.items():
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.memory_usage(key, samples=0)
            sizes = [int(size or 0) for size in await pipe.execute()]
        footprint[name] = {"keys": counts[name], "mean_bytes": sum(sizes) / len(sizes)}
    return footprint


def print_footprint(footprint: dict[str, Any]) -> None:
    total = sum(entry["keys"] * entry["mean_bytes"] for entry in footprint.values())
    objects = sum(footprint.get(kind, {}).get("keys", 0) for kind in ("voucher", "customer"))
    print()
    print("Redis after the initial load (MEMORY USAGE of up to 2,000 keys of each kind):")
    for name, entry in sorted(footprint.items(), key=lambda item: -item[1]["keys"]):
        print(f"  {name:<26} {entry['keys']:>10,} keys  {entry['mean_bytes']:>8,.0f} B mean")
    if objects:
        print(
            f"  all keys: {total / 2**20:,.0f} MiB for {objects:,} vouchers and customers, "
            f"{total / objects:,.0f} B per object with its aliases and membership "
            f"({total / objects * 1e6 / 2**30:,.2f} GiB per million)"
        )


def burst_ids(dsn: str, rows: int) -> list[tuple[str, str]]:
    """``rows`` (table, id) pairs, customers and vouchers alternately, in a fixed order."""
    half = rows // 2
    with psycopg.connect(dsn) as conn:
        customers = [r[0] for r in conn.execute(
            OWN + "SELECT id FROM customers ORDER BY md5(id) LIMIT %s", (half,)).fetchall()]
        vouchers = [r[0] for r in conn.execute(
            OWN + "SELECT id FROM vouchers ORDER BY md5(id) LIMIT %s", (rows - half,)).fetchall()]
    pairs: list[tuple[str, str]] = []
    for index in range(max(len(customers), len(vouchers))):
        if index < len(customers):
            pairs.append(("customers", customers[index]))
        if index < len(vouchers):
            pairs.append(("vouchers", vouchers[index]))
    return pairs


async def write_burst(
    dsn: str, pairs: list[tuple[str, str]], tx_rows: int, mark: int
) -> tuple[float, float, int]:
    """Commit the burst; returns the first BEGIN, the last COMMIT (perf_counter) and the WAL
    position after it."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        began = time.perf_counter()
        for start in range(0, len(pairs), tx_rows):
            chunk = pairs[start : start + tx_rows]
            async with conn.transaction():
                for table in ("customers", "vouchers"):
                    ids = [object_id for name, object_id in chunk if name == table]
                    if ids:
                        await conn.execute(
                            sql.SQL(
                                OWN + "UPDATE {} SET metadata = metadata || "
                                "jsonb_build_object('bench_standby', %s::int) WHERE id = ANY(%s)"
                            ).format(sql.Identifier(table)),
                            (mark, ids),
                        )
        committed = time.perf_counter()
        return began, committed, await write_lsn(conn)


async def one_run(
    args: argparse.Namespace,
    settings: IndexerSettings,
    dsn: str,
    standby_dsn: str | None,
    pairs: list[tuple[str, str]],
    mark: int,
    children: Children,
) -> dict[str, Any]:
    name = "standby" if standby_dsn else "primary"
    slot = f"bstandby_{name}"
    env = bench_env(
        dsn, es_prefix=f"{ES_PREFIX}{name}_", redis_prefix=f"{REDIS_PREFIX}{name}:",
        slot=slot, publication=f"bstandby_pub_{name}",
    )
    port = free_port()
    env["LOYALTY_METRICS_PORT"] = str(port)
    if standby_dsn:
        env["LOYALTY_PG_STANDBY_DSN"] = standby_dsn
    redis = aioredis.Redis.from_url(settings.redis_url)
    store = CacheStore(redis, KeyLayout(f"{REDIS_PREFIX}{name}:"))
    log_path = OUT / f"standby-indexer-{name}.log"
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            before = await write_lsn(conn)
        log(f"[{name}] indexer run: initial load")
        process = children.start(
            [sys.executable, "-m", "indexer.cli", "run", "--log-level", "INFO"], env, log_path
        )
        try:
            await wait_for_watermark(store, before, args.timeout, process)
        except RuntimeError as error:
            raise RuntimeError(
                f"initial load did not finish ({error}):\n{tail(log_path)}"
            ) from None
        if process.poll() is not None:
            raise RuntimeError(f"indexer run exited:\n{tail(log_path)}")
        footprint = (
            None if standby_dsn else await cache_footprint(redis, f"{REDIS_PREFIX}{name}:")
        )
        reset_statements(dsn)
        if standby_dsn:
            reset_statements(standby_dsn)
        metrics_before = indexer_metrics(port)
        log(f"[{name}] burst: {len(pairs):,} rows in transactions of {args.tx_rows}")
        began, committed, target = await write_burst(dsn, pairs, args.tx_rows, mark)
        caught_up = await wait_for_watermark(store, target, args.timeout, process)
        seconds = caught_up - began
        log(f"[{name}]   caught up {seconds:.2f} s after the first BEGIN")
        # Postgres flushes statement counters as statements end: a moment for the last.
        await asyncio.sleep(1.5)
        metrics_after = indexer_metrics(port)
        return {
            "run": name,
            "rows": len(pairs),
            "catch_up_seconds": seconds,
            "rows_per_second": len(pairs) / seconds,
            "writer_rows_per_second": len(pairs) / (committed - began),
            "primary": statement_figures(dsn),
            "standby": statement_figures(standby_dsn) if standby_dsn else None,
            "metrics": {
                key: metrics_after.get(key, 0.0) - metrics_before.get(key, 0.0)
                for key in metrics_after
            },
            "cache_footprint": footprint,
        }
    finally:
        children.stop_all()
        await redis.aclose()
        with psycopg.connect(dsn_for(args.dsn, "postgres"), autocommit=True) as admin:
            admin.execute(
                OWN + "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s AND NOT active",
                (slot,),
            )


def print_report(runs: list[dict[str, Any]]) -> None:
    def cell(run: dict[str, Any], path: str, fmt: str = "{:,.0f}") -> str:
        value: Any = run
        for part in path.split("."):
            value = None if value is None else value.get(part)
        return "n/a" if value is None else fmt.format(value)

    def reads(run: dict[str, Any], server: str) -> str:
        return cell(run, f'metrics.indexer_rebuild_reads_total{{server="{server}"}}')

    def fallbacks(run: dict[str, Any]) -> str:
        found = {
            key.split('"')[1]: value
            for key, value in run["metrics"].items()
            if key.startswith("indexer_standby_fallbacks_total") and value
        }
        return ", ".join(f"{k} {v:,.0f}" for k, v in sorted(found.items())) or "0"

    def mean_wait(run: dict[str, Any]) -> str:
        count = run["metrics"].get("indexer_standby_wait_seconds_count", 0.0)
        total = run["metrics"].get("indexer_standby_wait_seconds_sum", 0.0)
        return f"{total / count * 1000:.2f} ms" if count else "n/a"

    rows = [
        ("changed rows", lambda r: cell(r, "rows")),
        ("catch-up, s (first BEGIN to caught up)", lambda r: cell(r, "catch_up_seconds", "{:.2f}")),
        ("catch-up rows/s", lambda r: cell(r, "rows_per_second")),
        ("writer rows/s", lambda r: cell(r, "writer_rows_per_second")),
        ("primary: rebuild statements", lambda r: cell(r, "primary.rebuild_calls")),
        ("primary: rebuild blocks (hit + read)", lambda r: cell(r, "primary.rebuild_blocks")),
        ("primary: other indexer statements", lambda r: cell(r, "primary.other_calls")),
        ("primary: their blocks", lambda r: cell(r, "primary.other_blocks")),
        ("standby: rebuild statements", lambda r: cell(r, "standby.rebuild_calls")),
        ("standby: rebuild blocks (hit + read)", lambda r: cell(r, "standby.rebuild_blocks")),
        ("batches rebuilt from the primary", lambda r: reads(r, "primary")),
        ("batches rebuilt from the standby", lambda r: reads(r, "standby")),
        ("standby fallbacks", fallbacks),
        ("mean wait for the standby's replay", mean_wait),
    ]
    width = max(len(label) for label, _ in rows)
    print()
    print(f"{'':<{width}}  {'baseline: primary':>18}  {'with standby':>14}")
    for label, value in rows:
        print(f"{label:<{width}}  " + "  ".join(
            f"{value(run):>{18 if index == 0 else 14}}" for index, run in enumerate(runs)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/standby.py",
        description=__doc__,
        formatter_class=type(
            "Help",
            (argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter),
            {},
        ),
    )
    settings = IndexerSettings.from_env()
    parser.add_argument("--dsn", default=settings.pg_admin_dsn, help="admin DSN of the primary")
    parser.add_argument("--standby-dsn", default=DEFAULT_STANDBY_DSN,
                        help="admin DSN of its standby (any database: the scratch one is used)")
    parser.add_argument("--database", default="loyalty_bench_standby", help="scratch database")
    parser.add_argument("--customers", type=int, default=100_000, help="customers")
    parser.add_argument("--vouchers", type=int, default=200_000, help="vouchers")
    parser.add_argument("--burst-rows", type=int, default=100_000, help="rows the burst updates")
    parser.add_argument("--tx-rows", type=int, default=500, help="rows per transaction")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for a step")
    parser.add_argument("--keep", action="store_true", help="keep the scratch data")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    unwind_on_sigterm()
    settings = IndexerSettings.from_env()
    OUT.mkdir(parents=True, exist_ok=True)
    children = Children()
    try:
        asyncio.run(clean_sinks(settings.es_url, settings.redis_url, ES_PREFIX, REDIS_PREFIX))
        log(f"seeding {args.customers:,} customers, {args.vouchers:,} vouchers")
        dsn, _ = seeded_database(
            args.dsn, args.database,
            SeedPlan(customers=args.customers, vouchers=args.vouchers,
                     redemptions=args.vouchers // 2),
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(OWN + "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        standby_dsn = dsn_for(args.standby_dsn, args.database)
        pairs = burst_ids(dsn, args.burst_rows)
        runs = [
            asyncio.run(one_run(args, settings, dsn, None, pairs, 1, children)),
            asyncio.run(one_run(args, settings, dsn, standby_dsn, pairs, 2, children)),
        ]
        print_report(runs)
        if runs[0]["cache_footprint"]:
            print_footprint(runs[0]["cache_footprint"])
        (OUT / "standby.json").write_text(json.dumps(runs, indent=2))
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        children.stop_all()
        if not args.keep:
            log("clean-up: scratch database, slots, indices, keys")
            drop_database(dsn_for(args.dsn, "postgres"), args.database)
            asyncio.run(clean_sinks(settings.es_url, settings.redis_url, ES_PREFIX, REDIS_PREFIX))


if __name__ == "__main__":
    sys.exit(main())
