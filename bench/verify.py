"""``indexer verify`` at scale: rows/s and peak RSS at two table sizes, beside the initial load.

For each size (the one asked, then a tenth of it), a scratch database is created, migrated and
seeded (``indexer seed``'s generator), loaded by ``indexer run`` (its initial load is the
baseline: the same source reads and document builds, written instead of compared), then:

1. ``indexer verify`` on the clean sinks: seconds, objects/s, peak RSS (the process's own
   high-water mark, from ``wait4``), and its exit status (0 expected);
2. ``--damage`` vouchers corrupted in Elasticsearch, as many deleted from Redis and as many
   extra vouchers written to both sinks; ``indexer verify --repair``: seconds and counts;
3. ``indexer verify`` once more: exit status 0 expected.

Peak RSS at both sizes is the point: it must not grow with the table.

Usage: PYTHONPATH=. python3 bench/verify.py [--customers 100000] [--vouchers 1000000]
Needs the local stack (``python -m stack.cli up``); the scratch database, indices and keys are
removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from elasticsearch import AsyncElasticsearch
from scratchdb import bench_env, clean_sinks, drop_database, log, seeded_database

from cache.config import es_hosts
from cache.readmodel.documents import DOCUMENT_SCHEMA
from cache.readmodel.indices import Field
from cache.readmodel.keys import KeyLayout
from cache.records import Envelope, VersionedWrite
from cache.store import CacheStore
from cache.types import ObjectKind
from indexer.seed_rows import SeedPlan
from indexer.settings import IndexerSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT = REPO_ROOT / "bench" / "out"
ES_PREFIX = "bverify_"
REDIS_PREFIX = "bverify:"


@dataclass
class Run:
    seconds: float
    status: int
    peak_rss_mib: float
    report: dict[str, Any]


def env_for(dsn: str) -> dict[str, str]:
    return bench_env(
        dsn,
        es_prefix=ES_PREFIX,
        redis_prefix=REDIS_PREFIX,
        slot="bverify_slot",
        publication="bverify_pub",
    )


def run_verify(dsn: str, *args: str) -> Run:
    """One ``indexer verify`` process: wall time, exit status and its own peak RSS
    (``wait4``'s ``ru_maxrss``, KiB on Linux)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "indexer.cli", "verify", "--settle", "0", "--json", *args],
        cwd=REPO_ROOT,
        env=env_for(dsn),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    out = process.stdout.read()
    _, wait_status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(wait_status)
    seconds = time.perf_counter() - started
    report = orjson.loads(out) if out.strip() else {}
    return Run(seconds, process.returncode, usage.ru_maxrss / 1024, report)


def load(dsn: str, log_path: Path) -> tuple[float, int]:
    """Run the indexer until its initial load is done; the load's seconds and rows."""
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "indexer.cli", "run", "--log-level", "INFO"],
            cwd=REPO_ROOT,
            env=env_for(dsn),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        while True:
            text = log_path.read_text(errors="replace")
            found = re.search(r'"initial load complete".*', text)
            if found:
                line = orjson.loads(text[text.rfind("\n", 0, found.start()) + 1 : found.end()])
                return float(line["seconds"]), int(line["rows"])
            if process.poll() is not None:
                raise SystemExit(f"indexer exited early, see {log_path}")
            time.sleep(1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)


async def damage(count: int) -> None:
    """``count`` vouchers corrupted in Elasticsearch (same version), as many deleted from
    Redis, as many extra vouchers in both sinks."""
    settings = IndexerSettings.from_env()
    elastic = AsyncElasticsearch(es_hosts(settings.es_url))
    redis = aioredis.Redis.from_url(settings.redis_url)
    layout = KeyLayout(REDIS_PREFIX)
    store = CacheStore(redis, layout, tombstone_ttl_seconds=3600)
    try:
        alias = f"{ES_PREFIX}vouchers"
        index = next(iter(await elastic.indices.get_alias(name=alias)))
        page = await elastic.search(
            index=alias, size=2 * count, sort=[{Field.ID: "asc"}], version=True
        )
        hits = page["hits"]["hits"]
        watermark = await store.get_watermark()
        assert watermark is not None, "no watermark: the load did not finish"
        operations: list[dict[str, Any]] = []
        for hit in hits[:count]:
            source = hit["_source"]
            source[Field.DOC] = {**source[Field.DOC], "code": "FORGED"}
            operations.append(
                {
                    "index": {
                        "_index": index,
                        "_id": hit["_id"],
                        "version": hit["_version"],
                        "version_type": "external_gte",
                    }
                }
            )
            operations.append(source)
        writes: list[VersionedWrite] = []
        for number in range(count):
            ghost = f"ghost_{number:06d}"
            project = hits[0]["_source"][Field.PROJECT_ID]
            body = {"id": ghost, "code": ghost.upper()}
            operations.append(
                {
                    "index": {
                        "_index": index,
                        "_id": ghost,
                        "version": watermark,
                        "version_type": "external_gte",
                    }
                }
            )
            operations.append({Field.ID: ghost, Field.PROJECT_ID: project, Field.DOC: body})
            writes.append(
                VersionedWrite(
                    layout.object_key(project, ObjectKind.VOUCHER, ghost),
                    Envelope(watermark, DOCUMENT_SCHEMA, body),
                )
            )
        await elastic.bulk(operations=operations, refresh=True)
        await store.apply_writes(writes)
        for hit in hits[count:]:
            project = hit["_source"][Field.PROJECT_ID]
            await redis.delete(layout.object_key(project, ObjectKind.VOUCHER, hit["_id"]))
    finally:
        await elastic.close()
        await redis.aclose()


def one_size(args: argparse.Namespace, customers: int, vouchers: int) -> dict[str, Any]:
    settings = IndexerSettings.from_env()
    log(f"seeding {customers} customers, {vouchers} vouchers")
    asyncio.run(clean_sinks(settings.es_url, settings.redis_url, ES_PREFIX, REDIS_PREFIX))
    # What ``indexer seed --customers C --vouchers V`` makes (the other counts at defaults).
    plan = SeedPlan(customers=customers, vouchers=vouchers)
    dsn, _ = seeded_database(args.dsn, args.database, plan)
    OUT.mkdir(parents=True, exist_ok=True)
    log("initial load (baseline)")
    load_seconds, rows = load(dsn, OUT / f"verify-indexer-{vouchers}.log")
    log("verify, clean")
    clean = run_verify(dsn)
    log("damage, verify --repair")
    asyncio.run(damage(args.damage))
    repair = run_verify(dsn, "--repair")
    log("verify after the repair")
    after = run_verify(dsn)
    if not args.keep:
        drop_database(args.dsn, args.database)
        asyncio.run(clean_sinks(settings.es_url, settings.redis_url, ES_PREFIX, REDIS_PREFIX))
    checked = sum(kind["checked"] for kind in clean.report.get("kinds", {}).values())
    return {
        "customers": customers,
        "vouchers": vouchers,
        "rows": rows,
        "load": (load_seconds, rows / load_seconds),
        "clean": clean,
        "checked": checked,
        "repair": repair,
        "after": after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--vouchers", type=int, default=1_000_000)
    parser.add_argument("--damage", type=int, default=100, help="objects damaged each way")
    parser.add_argument("--dsn", default=IndexerSettings.from_env().pg_admin_dsn)
    parser.add_argument("--database", default="loyalty_bench_verify")
    parser.add_argument("--keep", action="store_true", help="keep the last scratch data")
    args = parser.parse_args()
    results = [
        one_size(args, args.customers // 10, args.vouchers // 10),
        one_size(args, args.customers, args.vouchers),
    ]
    print()
    print(
        f"{'size (customers/vouchers)':<28}{'load rows/s':>12}{'verify s':>10}"
        f"{'objects/s':>11}{'peak RSS MiB':>14}{'status':>8}"
    )
    for result in results:
        clean: Run = result["clean"]
        print(
            f"{result['customers']:>9} / {result['vouchers']:<16}{result['load'][1]:>12,.0f}"
            f"{clean.seconds:>10.1f}{result['checked'] / clean.seconds:>11,.0f}"
            f"{clean.peak_rss_mib:>14.0f}{clean.status:>8}"
        )
    print()
    for result in results:
        repair: Run = result["repair"]
        after: Run = result["after"]
        kinds = repair.report.get("kinds", {})
        voucher = kinds.get("voucher", {})
        print(
            f"{result['vouchers']} vouchers, {args.damage} damaged each way: verify --repair "
            f"{repair.seconds:.1f}s status {repair.status}, found missing {voucher.get('missing')}"
            f" extra {voucher.get('extra')} different {voucher.get('different')}, repaired "
            f"{voucher.get('repaired')}; peak RSS {repair.peak_rss_mib:.0f} MiB; next verify "
            f"status {after.status} ({after.report.get('differences')} differences)"
        )
    print(f"initial load (baseline) seconds: {[round(r['load'][0], 1) for r in results]}")


if __name__ == "__main__":
    main()
