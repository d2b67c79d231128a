"""Seed throughput: load a plan into a scratch database and print rows/s per table and total.

    python bench/seed.py                       # 100,000 customers, 1,000,000 vouchers
    python bench/seed.py --vouchers 200000 --redemptions 500000 --per-row-key-checks

The scratch database is created on the server of ``--dsn``, migrated, seeded, then dropped
(``--keep`` leaves it). Client CPU seconds against wall time tell whether the generator
or the server bounds the rate.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import psycopg
from psycopg import sql

from indexer.migrate import apply_migrations
from indexer.seed import DEFAULT_CHUNK_ROWS, format_report, seed_database
from indexer.seed_rows import SeedPlan
from indexer.settings import DEFAULT_PG_ADMIN_DSN


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Seed a scratch database and print rows/s per table and total."
    )
    parser.add_argument(
        "--dsn",
        # Creates and drops a database: the admin's.
        default=os.environ.get("LOYALTY_PG_ADMIN_DSN") or DEFAULT_PG_ADMIN_DSN,
        help="any database of the server to use, as the admin (default: %(default)s)",
    )
    parser.add_argument(
        "--database",
        default="loyalty_bench_seed",
        help="scratch database, dropped and created (default: %(default)s)",
    )
    defaults = SeedPlan()
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--projects", type=int, default=defaults.projects)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--campaigns", type=int, default=defaults.campaigns)
    parser.add_argument("--vouchers", type=int, default=1_000_000)
    parser.add_argument("--redemptions", type=int, default=defaults.redemptions)
    parser.add_argument("--segments", type=int, default=defaults.segments)
    parser.add_argument("--keys", type=int, default=defaults.keys)
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
    parser.add_argument(
        "--per-row-key-checks",
        action="store_true",
        help="keep foreign-key triggers during the load",
    )
    parser.add_argument("--keep", action="store_true", help="do not drop the scratch database")
    return parser.parse_args()


def recreate(admin_dsn: str, name: str, *, create: bool) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        if create:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def main() -> int:
    args = parse_args()
    plan = SeedPlan(
        seed=args.seed,
        projects=args.projects,
        customers=args.customers,
        campaigns=args.campaigns,
        vouchers=args.vouchers,
        redemptions=args.redemptions,
        segments=args.segments,
        keys=args.keys,
    )
    admin_dsn = psycopg.conninfo.make_conninfo(args.dsn, dbname="postgres")
    scratch_dsn = psycopg.conninfo.make_conninfo(args.dsn, dbname=args.database)
    recreate(admin_dsn, args.database, create=True)
    try:
        apply_migrations(scratch_dsn)
        cpu_before = time.process_time()
        report = seed_database(
            scratch_dsn,
            plan,
            progress=sys.stderr.isatty(),
            chunk_rows=args.chunk_rows,
            per_row_key_checks=args.per_row_key_checks,
        )
        client_cpu = time.process_time() - cpu_before
    finally:
        if not args.keep:
            recreate(admin_dsn, args.database, create=False)
    print(format_report(report))
    load = os.getloadavg()[0]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"client CPU {client_cpu:.1f} s of {report.elapsed:.1f} s wall, "
        f"peak RSS {peak_mb:.0f} MB, load average {load:.2f} on {os.cpu_count()} CPUs"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
