"""``indexer seed``: load deterministic demo data into the contract tables with COPY.

The rows come from ``seed_rows`` (pure generation); this module only streams them into
Postgres, table by table in foreign-key order, one COPY and one transaction per chunk so a
running indexer never has to decode one giant transaction. Chunking does not change the data.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from itertools import islice
from typing import Any

import psycopg
from tqdm import tqdm

from indexer.migrate import add_dsn_argument, connect, one_line
from indexer.queries import query
from indexer.seed_rows import TABLES, SeedPlan, SeedPlanError, SeedRows
from indexer.settings import IndexerSettings

__all__ = ["SeedError", "SeedPlan", "SeedPlanError", "SeedReport", "add_command", "seed_database"]

DEFAULT_CHUNK_ROWS = 20_000


class SeedError(Exception):
    """Loading failed; the message is one line, fit for a terminal."""


@dataclass(frozen=True, slots=True)
class SeedReport:
    rows: Mapping[str, int]  # per table, in load order
    seconds: Mapping[str, float]  # per table, generation and load together
    demo_app_id: str | None
    demo_token: str | None = field(repr=False)
    elapsed: float
    key_checks: str  # "per row" (foreign-key triggers) or "per table" (after each table)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def rows_per_second(self) -> float:
        return self.total_rows / self.elapsed if self.elapsed > 0 else 0.0

    def table_rate(self, table: str) -> float:
        seconds = self.seconds[table]
        return self.rows[table] / seconds if seconds > 0 else 0.0


def seed_database(
    dsn: str,
    plan: SeedPlan,
    *,
    progress: bool = False,
    truncate: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    per_row_key_checks: bool = False,
) -> SeedReport:
    """Generate ``plan``'s rows and COPY them into the database at ``dsn``.

    ``truncate`` empties the contract tables first (in its own transaction). Where the role
    may, foreign-key triggers are skipped during the load and every reference of a table is
    checked once it is loaded instead (twice the speed); ``per_row_key_checks`` keeps the
    triggers. Raises ``SeedError`` when the database refuses, cannot be reached, or a loaded
    table references missing rows.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
    source = SeedRows(plan)
    rows: dict[str, int] = {}
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    step = "connect"
    try:
        with connect(dsn, autocommit=True) as conn:
            if truncate:
                step = "truncate"
                conn.execute(query("seed_truncate"))
            check_per_table = not per_row_key_checks and _skip_row_triggers(conn)
            for table in TABLES:
                step = table
                table_started = time.perf_counter()
                rows[table] = _copy_table(conn, table, source, chunk_rows, progress)
                if check_per_table and table != "projects":
                    _check_references(conn, table)
                seconds[table] = time.perf_counter() - table_started
    except psycopg.errors.UndefinedTable as error:
        raise SeedError(f"{step}: {one_line(error)} (run `indexer migrate` first)") from error
    except psycopg.Error as error:
        raise SeedError(f"{step}: {one_line(error)}") from error
    demo = source.demo_key()
    return SeedReport(
        rows=rows,
        seconds=seconds,
        demo_app_id=demo[0] if demo else None,
        demo_token=demo[1] if demo else None,
        elapsed=time.perf_counter() - started,
        key_checks="per table" if check_per_table else "per row",
    )


def _skip_row_triggers(conn: psycopg.Connection[Any]) -> bool:
    """Turn foreign-key triggers off for this session if the role may; say whether it did."""
    try:
        conn.execute(query("seed_skip_row_triggers"))
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def _check_references(conn: psycopg.Connection[Any], table: str) -> None:
    row = conn.execute(query(f"seed_dangling_{table}")).fetchone()
    dangling = row[0] if row else 0
    if dangling:
        raise SeedError(f"{table}: {dangling} references to missing rows after the load")


def _copy_table(
    conn: psycopg.Connection[Any], table: str, source: SeedRows, chunk_rows: int, progress: bool
) -> int:
    statement = query(f"seed_copy_{table}")
    stream = source.rows(table)
    loaded = 0
    with tqdm(
        total=source.expected_rows(table),
        desc=table,
        unit=" rows",
        unit_scale=True,
        disable=not progress,
        file=sys.stderr,
    ) as bar:
        # Rows stream into the COPY as they are made: the server parses one part while the
        # next is generated, and no chunk is ever held in memory.
        for first in stream:
            written = 1
            with conn.transaction(), conn.cursor() as cursor, cursor.copy(statement) as copy:
                copy.write_row(first)
                for row in islice(stream, chunk_rows - 1):
                    copy.write_row(row)
                    written += 1
            loaded += written
            bar.update(written)
    return loaded


def format_report(report: SeedReport) -> str:
    lines = [f"{'table':<16}{'rows':>12}{'rows/s':>12}"]
    for table, count in report.rows.items():
        lines.append(f"{table:<16}{count:>12,}{report.table_rate(table):>12,.0f}")
    lines.append(f"{'total':<16}{report.total_rows:>12,}{report.rows_per_second:>12,.0f}")
    lines.append(f"elapsed {report.elapsed:.2f} s, foreign keys checked {report.key_checks}")
    if report.demo_app_id is not None:
        lines.append(f"demo app id: {report.demo_app_id}")
        lines.append(f"demo token: {report.demo_token}")
    return "\n".join(lines)


_COUNT_HELP = {
    "projects": "projects (tenants)",
    "customers": "customers, spread over the projects",
    "campaigns": "campaigns, spread over the projects",
    "vouchers": "vouchers, spread over the projects",
    "redemptions": "redemptions, following the vouchers",
    "segments": "segments, spread over the projects, alternately static and auto-update",
    "keys": "API keys per project",
}


def add_command(subparsers: Any) -> None:
    """Register ``indexer seed`` on the ``indexer`` command's sub-parsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "seed",
        help="load deterministic demo data",
        description="Generate deterministic demo data and load it with COPY. Prints rows per "
        "table, rows/s, and the app id and token of the first key of the first project.",
    )
    defaults = SeedPlan()
    add_dsn_argument(parser)
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="seed of every generated value (default: %(default)s)",
    )
    for plan_field in fields(SeedPlan):
        if plan_field.name in _COUNT_HELP:
            parser.add_argument(
                f"--{plan_field.name}",
                type=int,
                metavar="N",
                default=getattr(defaults, plan_field.name),
                help=f"{_COUNT_HELP[plan_field.name]} (default: %(default)s)",
            )
    parser.add_argument("--truncate", action="store_true", help="empty the contract tables first")
    parser.add_argument(
        "--per-row-key-checks",
        action="store_true",
        help="keep foreign-key triggers during the load (slower) instead of "
        "checking each table once loaded",
    )
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=DEFAULT_CHUNK_ROWS,
        metavar="N",
        help="rows per COPY and transaction (default: %(default)s)",
    )
    parser.set_defaults(handler=run_seed)


def run_seed(args: argparse.Namespace, settings: IndexerSettings) -> int:
    try:
        plan = SeedPlan(seed=args.seed, **{name: getattr(args, name) for name in _COUNT_HELP})
    except SeedPlanError as error:
        print(f"indexer seed: {error}", file=sys.stderr)
        return 2
    if args.chunk_rows < 1:
        print(
            f"indexer seed: --chunk-rows must be at least 1, not {args.chunk_rows}", file=sys.stderr
        )
        return 2
    try:
        report = seed_database(
            args.dsn or settings.pg_admin_dsn,
            plan,
            progress=sys.stderr.isatty(),
            truncate=args.truncate,
            chunk_rows=args.chunk_rows,
            per_row_key_checks=args.per_row_key_checks,
        )
    except SeedError as error:
        print(f"indexer seed: {error}", file=sys.stderr)
        return 1
    print(format_report(report))
    return 0
