"""The scratch data the benches measure on: a database created, migrated, seeded and dropped,
and the indices and keys of a bench prefix removed; and the child processes a bench starts
(``indexer run``, ``readapi serve``), stopped on any exit path.

Imported by the bench scripts as a sibling module (``python bench/<name>.py`` puts this folder
first on the path).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import psycopg
import redis.asyncio as aioredis
from elasticsearch import AsyncElasticsearch
from psycopg import sql

from cache.config import es_hosts
from indexer.migrate import apply_migrations
from indexer.seed import SeedReport, seed_database
from indexer.seed_rows import SeedPlan

REPO_ROOT = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def unwind_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, through a bench's clean-up of its scratch data."""

    def terminated(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)


def bench_env(
    dsn: str, *, es_prefix: str, redis_prefix: str, slot: str, publication: str
) -> dict[str, str]:
    """The environment of the indexer and API processes a bench starts: its own database,
    index and key prefixes, slot and publication, and no metrics listeners."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "LOYALTY_PG_DSN": dsn,
        "LOYALTY_PG_ADMIN_DSN": dsn,
        "LOYALTY_ES_INDEX_PREFIX": es_prefix,
        "LOYALTY_REDIS_KEY_PREFIX": redis_prefix,
        "LOYALTY_SLOT_NAME": slot,
        "LOYALTY_PUBLICATION": publication,
        "LOYALTY_METRICS_PORT": "0",
        "LOYALTY_REINDEX_METRICS_PORT": "0",
    }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0-100) of values sorted ascending; NaN when empty."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def dsn_for(dsn: str, database: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, dbname=database)


def drop_database(admin_dsn: str, database: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        # A logical slot pins its database: slots go first.
        for (slot,) in admin.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (database,)
        ).fetchall():
            admin.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )


def seeded_database(admin_dsn: str, database: str, plan: SeedPlan) -> tuple[str, SeedReport]:
    """Drop and create ``database`` on the server of ``admin_dsn``, migrate and seed it;
    returns its DSN (as the admin) and the seed's report."""
    server = dsn_for(admin_dsn, "postgres")
    drop_database(server, database)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    dsn = dsn_for(admin_dsn, database)
    apply_migrations(dsn)
    return dsn, seed_database(dsn, plan)


async def clean_sinks(es_url: str, redis_url: str, es_prefix: str, redis_prefix: str) -> None:
    """Delete a bench's indices and Redis keys: a run killed half way leaves millions of keys
    that slow every later test."""
    elastic = AsyncElasticsearch(es_hosts(es_url))
    redis = aioredis.Redis.from_url(redis_url)
    try:
        await elastic.options(ignore_status=404).indices.delete(
            index=f"{es_prefix}*", expand_wildcards="all"
        )
        batch: list[bytes] = []
        async for key in redis.scan_iter(match=f"{redis_prefix}*", count=5000):
            batch.append(key)
            if len(batch) == 5000:
                await redis.unlink(*batch)
                batch = []
        if batch:
            await redis.unlink(*batch)
    finally:
        await elastic.close()
        await redis.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[Any], timeout: float = 60) -> int:
    """SIGTERM (a child finishes its step, or removes its scratch data), SIGKILL after
    ``timeout`` seconds; the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Children:
    """Every subprocess started, so that any exit path stops them before the clean-up: a
    reindex or an indexer left running would write into indices being deleted."""

    def __init__(self) -> None:
        self._processes: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: list[str], env: dict[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                args, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        self._processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self._processes:
            if process.returncode is None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self._processes:
            if process.returncode is not None:
                continue
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()


async def wait_api_ready(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Until ``readapi serve`` on ``port`` answers ``/readyz`` with 200 (two minutes at most)."""
    deadline = time.monotonic() + 120
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"readapi serve exited early:\n{tail(log_path)}")
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"readapi serve did not become ready:\n{tail(log_path)}")


def seed_plan_of(args: Any) -> SeedPlan:
    """The plan of a bench's ``--seed``, ``--projects``, ``--customers``, ``--vouchers`` and
    ``--redemptions`` (the other counts at their defaults)."""
    return SeedPlan(
        seed=args.seed,
        projects=args.projects,
        customers=args.customers,
        vouchers=args.vouchers,
        redemptions=args.redemptions,
    )


def plot_reads_per_second(
    ax: Any, seconds: Sequence[dict[str, Any]], *, failed_key: str, failed_label: str, xlabel: str
) -> None:
    """The read p99 and p50 of each second on the matplotlib axes ``ax`` (``seconds``: dicts
    with ``second``, ``p99_ms``, ``p50_ms`` and ``failed_key``), the seconds with failures
    marked."""
    ax.plot(
        [s["second"] for s in seconds],
        [s["p99_ms"] for s in seconds],
        color="tab:red",
        label="read p99 per second",
    )
    ax.plot(
        [s["second"] for s in seconds],
        [s["p50_ms"] for s in seconds],
        color="tab:gray",
        linewidth=0.8,
        label="read p50 per second",
    )
    failed = [s for s in seconds if s[failed_key]]
    if failed:
        ax.scatter(
            [s["second"] for s in failed],
            [s["p99_ms"] for s in failed],
            color="black",
            marker="x",
            label=failed_label,
            zorder=3,
        )
    ax.set_ylim(bottom=0)
    ax.set_ylabel("latency, ms")
    ax.set_xlabel(xlabel)
    ax.legend(loc="upper right")
