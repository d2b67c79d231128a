"""One transaction of a million rows through ``indexer run``: seconds to visible, the
indexer's RSS, and no restart loop.

The indexer reads the slot through a server-side cursor and applies a transaction larger
than a batch (``LOYALTY_BATCH_CHANGES``) in parts as it reads it (``indexer.batch_reader``).
The claim measured: one transaction that updates every voucher is applied without holding it
all in memory and without a restart loop.

For each size (a tenth of the one asked, then the one asked), a scratch database is created,
migrated and seeded (``indexer seed``'s generator), then:

1. ``indexer run`` starts and stays up; once its initial load is done and its first step
   ran, its ``VmRSS`` and ``VmHWM`` (``/proc/<pid>/status``) are the baseline, and its
   high-water mark is reset (``/proc/<pid>/clear_refs``), so ``VmHWM`` at the end is the
   peak of the big transaction alone;
2. one statement in one transaction, ``UPDATE vouchers SET metadata = metadata ||
   '{"bigtx": 1}'``, is committed; ``pg_current_wal_lsn()`` right after the commit is the
   position to reach;
3. every 0.2 s: the applied watermark in Redis, the indexer's ``VmRSS`` (the maximum is
   kept) and whether it is still running; every second, how many of the sampled vouchers
   Redis already holds updated (parts becoming visible before the whole transaction is).
   Done when the watermark reaches the position of step 2;
4. the indexer's log since the commit is read for a restart loop: "indexer waiting for a
   dependency", "initial load needed", error and warning lines, tracebacks;
5. 1,000 random vouchers are read from Redis (``CacheStore.get_object``) and from
   Elasticsearch (``GET <prefix>vouchers/_doc/<id>``): each must carry ``metadata.bigtx ==
   1``; the whole voucher index is also counted.

Peak RSS at both sizes is the point: it must not grow with the transaction. The figures go
to ``bench/out/bigtx.json``, the indexer's logs to ``bench/out/bigtx-indexer-<vouchers>.log``.

Usage: PYTHONPATH=. python3 bench/bigtx.py [--customers 100000] [--vouchers 1000000]
Needs the local stack (``python -m stack.cli up``). The indexer is stopped and the scratch
database (``loyalty_bench_bigtx``, with its slot), the indices (``bbigtx_*``) and the Redis
keys (``bbigtx:*``) are removed at the end, also after an error or Ctrl-C, unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import redis.asyncio as aioredis
from elasticsearch import AsyncElasticsearch
from scratchdb import bench_env, clean_sinks, drop_database, log, seeded_database, unwind_on_sigterm

from cache.config import es_hosts
from cache.readmodel.codec import decode_envelope
from cache.readmodel.indices import Field
from cache.readmodel.keys import KeyLayout
from cache.store import CacheStore
from cache.types import Lsn, ObjectKind
from indexer.seed_rows import SeedPlan
from indexer.settings import IndexerSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT = REPO_ROOT / "bench" / "out"
ES_PREFIX = "bbigtx_"
REDIS_PREFIX = "bbigtx:"
SLOT = "bbigtx_slot"
PUBLICATION = "bbigtx_pub"
POLL_SECONDS = 0.2
PROGRESS_SECONDS = 1.0
UPDATE = """UPDATE vouchers SET metadata = metadata || '{"bigtx": 1}'::jsonb"""
# Log messages that mean the loop left its normal course.
WAITING = "indexer waiting for a dependency"
RELOAD = "initial load needed"


def env_for(dsn: str) -> dict[str, str]:
    return bench_env(
        dsn, es_prefix=ES_PREFIX, redis_prefix=REDIS_PREFIX, slot=SLOT, publication=PUBLICATION
    )


def memory_mib(pid: int) -> dict[str, float] | None:
    """``VmRSS`` and ``VmHWM`` of a process, MiB; None once it is gone."""
    found: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    found[name] = int(value.split()[0]) / 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return found if len(found) == 2 else None


def reset_high_water_mark(pid: int) -> bool:
    """Reset the process's ``VmHWM`` to its ``VmRSS`` now (Linux 4.0+); whether it worked."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear:
            clear.write("5")
    except OSError as error:
        log(f"  could not reset VmHWM ({error}): it keeps the initial load's peak")
        return False
    return True


def json_lines(path: Path, start: int = 0) -> tuple[list[dict[str, Any]], list[str]]:
    """The structured log lines of a log file from byte ``start``, and the other lines (a
    print, a traceback)."""
    with path.open("rb") as file:
        file.seek(start)
        text = file.read().decode(errors="replace")
    lines: list[dict[str, Any]] = []
    other: list[str] = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
                continue
            except ValueError:
                pass
        if line.strip():
            other.append(line)
    return lines, other


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class IndexerProcess:
    """``indexer run`` as a long-lived subprocess, its output in ``log_path``."""

    def __init__(self, dsn: str, log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "indexer.cli", "run", "--log-level", "INFO"],
                cwd=REPO_ROOT,
                env=env_for(dsn),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        self.pid = self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_for(self, message: str, timeout: float) -> dict[str, Any]:
        """The first log line whose ``msg`` is ``message``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in json_lines(self.log_path)[0]:
                if line.get("msg") == message:
                    return line
            if not self.alive():
                raise RuntimeError(f"indexer run exited early:\n{tail(self.log_path)}")
            time.sleep(0.5)
        raise RuntimeError(f"no {message!r} line in {timeout:.0f} s:\n{tail(self.log_path)}")

    def stop(self) -> int | None:
        """SIGTERM, then wait (SIGKILL after a minute); the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log("  indexer did not stop within 60 s of SIGTERM: killed")
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def sample_vouchers(dsn: str, count: int) -> list[tuple[str, str]]:
    """``count`` random vouchers, as (project id, voucher id)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT project_id, id FROM vouchers ORDER BY random() LIMIT %s", (count,)
        ).fetchall()
    return [(str(project_id), str(voucher_id)) for project_id, voucher_id in rows]


def carries_mark(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and isinstance(body.get("metadata"), dict)
        and body["metadata"].get("bigtx") == 1
    )


async def updated_in_redis(store: CacheStore, keys: list[str]) -> int:
    """How many of ``keys`` hold a voucher carrying the mark."""
    updated = 0
    for blob in await store.get_raw_many(keys):
        if blob is not None and carries_mark(decode_envelope(blob).data):
            updated += 1
    return updated


async def big_transaction(
    args: argparse.Namespace,
    dsn: str,
    indexer: IndexerProcess,
    sample: list[tuple[str, str]],
    settings: IndexerSettings,
) -> dict[str, Any]:
    """Steps 2 to 5 of the module docstring, with the indexer already loaded."""
    redis = aioredis.Redis.from_url(settings.redis_url)
    elastic = AsyncElasticsearch(es_hosts(settings.es_url))
    layout = KeyLayout(REDIS_PREFIX)
    store = CacheStore(redis, layout)
    keys = [layout.object_key(project, ObjectKind.VOUCHER, voucher) for project, voucher in sample]
    samples: list[dict[str, Any]] = []
    progress: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    try:
        watermark_before = await store.get_watermark()
        log_start = indexer.log_path.stat().st_size
        log("one transaction: " + UPDATE)
        t0 = time.perf_counter()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=False) as conn:
            cursor = await conn.execute(UPDATE)
            rows = cursor.rowcount
            await conn.commit()
            committed = time.perf_counter()
            await conn.set_autocommit(True)
            row = await (await conn.execute("SELECT pg_current_wal_lsn()::text")).fetchone()
        assert row is not None
        commit_lsn = Lsn.parse(row[0])
        log(
            f"  {rows:,} rows updated in {committed - t0:.1f} s, committed; "
            f"pg_current_wal_lsn() {commit_lsn}"
        )
        peak_rss = 0.0
        visible_at: float | None = None
        first_part_at: float | None = None
        watermark: int | None = None
        next_progress = committed
        next_log = committed + 10
        deadline = committed + args.timeout
        while True:
            now = time.perf_counter()
            memory = memory_mib(indexer.pid)
            alive = indexer.alive() and memory is not None
            watermark = await store.get_watermark()
            if memory is not None:
                peak_rss = max(peak_rss, memory["VmRSS"])
            samples.append(
                {
                    "t": round(now - committed, 3),
                    "vm_rss_mib": None if memory is None else round(memory["VmRSS"], 1),
                    "watermark": None if watermark is None else str(Lsn(watermark)),
                }
            )
            if watermark is not None and watermark >= commit_lsn:
                visible_at = now
                break
            if not alive:
                log(f"  indexer exited during the apply:\n{tail(indexer.log_path)}")
                break
            if now > deadline:
                log(f"  not visible after {args.timeout:.0f} s: giving up")
                break
            if now >= next_progress:
                next_progress = now + PROGRESS_SECONDS
                updated = await updated_in_redis(store, keys)
                progress.append({"t": round(now - committed, 3), "sample_updated": updated})
                if updated and first_part_at is None:
                    first_part_at = now
            if now >= next_log:
                next_log = now + 10
                updated = progress[-1]["sample_updated"] if progress else 0
                log(
                    f"  {now - committed:5.0f} s: {updated}/{len(keys)} sampled vouchers"
                    " updated in Redis, VmRSS "
                    f"{memory['VmRSS'] if memory else float('nan'):.0f} MiB (max "
                    f"{peak_rss:.0f}), watermark "
                    f"{'none' if watermark is None else Lsn(watermark)}"
                )
            await asyncio.sleep(POLL_SECONDS)
        end_memory = memory_mib(indexer.pid)
        seconds = None if visible_at is None else visible_at - committed
        if seconds is not None:
            log(f"  visible {seconds:.1f} s after the commit, peak VmRSS {peak_rss:.0f} MiB")
        lines, other = json_lines(indexer.log_path, log_start)
        by_level: dict[str, int] = {}
        for line in lines:
            level = str(line.get("level"))
            by_level[level] = by_level.get(level, 0) + 1
        trouble = [
            line
            for line in lines
            if line.get("level") in ("warning", "error", "critical")
            or line.get("msg") in (WAITING, RELOAD)
            or "exc" in line
        ]
        result = {
            "rows_updated": rows,
            "update_seconds": committed - t0,
            "commit_lsn": str(commit_lsn),
            "watermark_before": None if watermark_before is None else str(Lsn(watermark_before)),
            "watermark_after": None if watermark is None else str(Lsn(watermark)),
            "visible": visible_at is not None,
            "seconds_to_visible": seconds,
            "rows_per_second": None if not seconds else rows / seconds,
            "first_sampled_part_seconds": (
                None if first_part_at is None else first_part_at - committed
            ),
            "peak_vm_rss_mib": peak_rss,
            "end_vm_rss_mib": None if end_memory is None else end_memory["VmRSS"],
            "end_vm_hwm_mib": None if end_memory is None else end_memory["VmHWM"],
            "indexer_alive": indexer.alive(),
            "indexer_pid": indexer.pid,
            "log": {
                "lines_by_level": by_level,
                "waiting_lines": sum(1 for line in lines if line.get("msg") == WAITING),
                "reload_lines": sum(1 for line in lines if line.get("msg") == RELOAD),
                "running_lines": sum(1 for line in lines if line.get("msg") == "indexer running"),
                "error_lines": sum(
                    1 for line in lines if line.get("level") in ("error", "critical")
                ),
                "warning_lines": sum(1 for line in lines if line.get("level") == "warning"),
                "exception_lines": sum(1 for line in lines if "exc" in line),
                "other_lines": len(other),
                "trouble": trouble[:20],
                "other": other[:40],
            },
            "samples": samples,
            "sample_progress": progress,
        }
        log(f"checking {len(sample)} random vouchers in Redis and Elasticsearch")
        result["sample_check"] = await check_sample(store, elastic, sample)
        result["es_vouchers_total"] = await count_vouchers(elastic)
    finally:
        await elastic.close()
        await redis.aclose()
    return result


async def check_sample(
    store: CacheStore, elastic: AsyncElasticsearch, sample: list[tuple[str, str]]
) -> dict[str, Any]:
    """How many sampled vouchers carry the mark in Redis, in Elasticsearch, in both."""
    alias = f"{ES_PREFIX}vouchers"
    gate = asyncio.Semaphore(16)

    async def one(project_id: str, voucher_id: str) -> tuple[bool, bool]:
        async with gate:
            envelope = await store.get_object(project_id, ObjectKind.VOUCHER, voucher_id)
            answer = await elastic.options(ignore_status=404).get(index=alias, id=voucher_id)
        found = answer.body
        in_redis = envelope is not None and carries_mark(envelope.data)
        in_es = bool(found.get("found")) and carries_mark(found["_source"].get(Field.DOC))
        return in_redis, in_es

    checks = await asyncio.gather(*(one(project, voucher) for project, voucher in sample))
    failed = [voucher for (_, voucher), check in zip(sample, checks, strict=True) if not all(check)]
    return {
        "checked": len(sample),
        "redis": sum(1 for in_redis, _ in checks if in_redis),
        "elasticsearch": sum(1 for _, in_es in checks if in_es),
        "both": sum(1 for check in checks if all(check)),
        "failed_ids": failed[:20],
    }


async def count_vouchers(elastic: AsyncElasticsearch) -> int:
    """Vouchers in the index (metadata is not indexed: the mark is checked on the sample)."""
    alias = f"{ES_PREFIX}vouchers"
    await elastic.indices.refresh(index=alias)
    total = await elastic.count(index=alias)
    return int(total["count"])


def one_size(
    args: argparse.Namespace, settings: IndexerSettings, customers: int, vouchers: int
) -> dict[str, Any]:
    indexer: IndexerProcess | None = None
    try:
        asyncio.run(clean_sinks(settings.es_url, settings.redis_url, ES_PREFIX, REDIS_PREFIX))
        log(f"seeding {customers} customers, {vouchers} vouchers")
        plan = SeedPlan(customers=customers, vouchers=vouchers)
        dsn, _ = seeded_database(args.dsn, args.database, plan)
        sample = sample_vouchers(dsn, args.sample)
        log("indexer run: initial load")
        indexer = IndexerProcess(dsn, OUT / f"bigtx-indexer-{vouchers}.log")
        initial = indexer.wait_for("initial load complete", args.timeout)
        log(f"  {initial['rows']} rows in {initial['seconds']} s")
        # Its first step ran: what it holds while idle, beside the load's peak.
        indexer.wait_for("indexer running", 120)
        time.sleep(2)
        baseline = memory_mib(indexer.pid)
        if baseline is None:
            raise RuntimeError(f"indexer run exited after its load:\n{tail(indexer.log_path)}")
        log(
            f"  indexer pid {indexer.pid}: VmRSS {baseline['VmRSS']:.0f} MiB, VmHWM "
            f"{baseline['VmHWM']:.0f} MiB"
        )
        hwm_reset = not args.no_reset_hwm and reset_high_water_mark(indexer.pid)
        measured = asyncio.run(big_transaction(args, dsn, indexer, sample, settings))
        status = indexer.stop()
        measured["indexer_exit_status"] = status
        return {
            "customers": customers,
            "vouchers": vouchers,
            "batch_changes": settings.batch_changes,
            "initial_load": {
                "rows": int(initial["rows"]),
                "seconds": float(initial["seconds"]),
            },
            "baseline_vm_rss_mib": baseline["VmRSS"],
            "baseline_vm_hwm_mib": baseline["VmHWM"],
            "hwm_reset_after_baseline": hwm_reset,
            **measured,
        }
    finally:
        if indexer is not None:
            indexer.stop()
        if not args.keep:
            log("clean-up: scratch database, indices, keys")
            drop_database(args.dsn, args.database)
            asyncio.run(clean_sinks(settings.es_url, settings.redis_url, ES_PREFIX, REDIS_PREFIX))


def mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} MiB"


def print_size(result: dict[str, Any]) -> None:
    seconds = result["seconds_to_visible"]
    rate = result["rows_per_second"]
    check = result["sample_check"]
    logged = result["log"]
    hwm_note = (
        "peak since the reset after the initial load"
        if result["hwm_reset_after_baseline"]
        else "process lifetime, initial load included"
    )
    rows = [
        ("rows updated (one statement, one transaction)", f"{result['rows_updated']:,}"),
        ("UPDATE + COMMIT", f"{result['update_seconds']:.1f} s"),
        (
            "commit to visible (watermark >= commit LSN)",
            "NOT VISIBLE" if seconds is None else f"{seconds:.1f} s",
        ),
        ("rows/s", "n/a" if rate is None else f"{rate:,.0f}"),
        (
            "first sampled voucher updated in Redis",
            "n/a"
            if result["first_sampled_part_seconds"] is None
            else f"{result['first_sampled_part_seconds']:.1f} s after the commit",
        ),
        ("indexer VmRSS after the initial load", mib(result["baseline_vm_rss_mib"])),
        ("indexer VmHWM after the initial load", mib(result["baseline_vm_hwm_mib"])),
        ("peak VmRSS during the transaction (0.2 s)", mib(result["peak_vm_rss_mib"])),
        (f"VmHWM at the end ({hwm_note})", mib(result["end_vm_hwm_mib"])),
        ("VmRSS at the end", mib(result["end_vm_rss_mib"])),
        (
            "indexer same pid and running throughout",
            f"{'yes' if result['indexer_alive'] else 'NO'} (pid {result['indexer_pid']}, "
            f"exit status on SIGTERM {result['indexer_exit_status']})",
        ),
        (
            "log since the commit: waiting / reload / error / warning / exc / non-JSON",
            f"{logged['waiting_lines']} / {logged['reload_lines']} / {logged['error_lines']} / "
            f"{logged['warning_lines']} / {logged['exception_lines']} / {logged['other_lines']}",
        ),
        (
            f"sample of {check['checked']}: metadata.bigtx == 1 in Redis / ES / both",
            f"{check['redis']} / {check['elasticsearch']} / {check['both']}",
        ),
        ("ES vouchers", f"{result['es_vouchers_total']:,}"),
    ]
    print()
    print(
        f"{result['customers']:,} customers / {result['vouchers']:,} vouchers "
        f"(LOYALTY_BATCH_CHANGES {result['batch_changes']}; initial load "
        f"{result['initial_load']['rows']:,} rows in {result['initial_load']['seconds']:.1f} s)"
    )
    for label, value in rows:
        print(f"  {label:<74}{value}")
    for line in logged["trouble"][:5]:
        print(f"  log: {json.dumps(line)[:300]}")
    for line in logged["other"][:5]:
        print(f"  log: {line[:300]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--vouchers", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=1000, help="vouchers checked at the end")
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds allowed for the load, the apply"
    )
    parser.add_argument(
        "--no-reset-hwm", action="store_true", help="keep VmHWM from the initial load on"
    )
    parser.add_argument("--dsn", default=IndexerSettings.from_env().pg_admin_dsn)
    parser.add_argument("--database", default="loyalty_bench_bigtx")
    parser.add_argument("--keep", action="store_true", help="keep the last size's scratch data")
    args = parser.parse_args()

    unwind_on_sigterm()
    settings = IndexerSettings.from_env()
    OUT.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for customers, vouchers in (
        (args.customers // 10, args.vouchers // 10),
        (args.customers, args.vouchers),
    ):
        results.append(one_size(args, settings, customers, vouchers))
        (OUT / "bigtx.json").write_text(json.dumps(results, indent=1, default=str))
    for result in results:
        print_size(result)
    print()
    print(f"figures: {OUT / 'bigtx.json'}")


if __name__ == "__main__":
    main()
