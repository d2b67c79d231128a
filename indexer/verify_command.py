"""The ``indexer verify`` sub-command: compare Postgres with both sinks, optionally repair.

Exit status 0 when nothing differs, 1 when anything does (also after a repair: the run
that repaired found differences; run it again to see it clean), 2 on bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

import orjson

from cache.logs import configure_logging
from cache.types import ObjectKind
from indexer.commands import open_clients
from indexer.progress import Progress
from indexer.rebuild import TABLE_OF_KIND
from indexer.settings import ENVIRONMENT_HELP, IndexerSettings
from indexer.source import DocumentSource, connect
from indexer.verify import RepairRefused, Verifier
from indexer.verify_report import API_KEY, KIND_ORDER, VerifyReport, VerifyScope

log = logging.getLogger("indexer.verify")

KIND_CHOICES = ("all", *(kind.value for kind in KIND_ORDER))


async def run_verify(
    settings: IndexerSettings,
    scope: VerifyScope,
    *,
    repair: bool,
    settle_seconds: float,
    examples: int,
    terminal: bool,
) -> VerifyReport:
    async with await connect(settings.pg_dsn, autocommit=True) as conn:
        source = DocumentSource(conn)
        totals: dict[str, int] = {}
        for kind in scope.kinds:
            rows = await source.row_count(TABLE_OF_KIND[kind], scope.project_id)
            totals[kind.value] = rows if scope.sample is None else min(rows, scope.sample)
        progress = Progress("verify", totals, terminal=terminal, logger=log)
        async with open_clients(settings) as clients:
            verifier = Verifier(
                conn,
                clients.search,
                clients.cache,
                settle_seconds=settle_seconds,
                repair=repair,
                progress=progress,
                examples=examples,
            )
            try:
                return await verifier.run(scope)
            finally:
                progress.close()


def print_report(report: VerifyReport, *, repair: bool) -> None:
    columns: tuple[str, ...] = ("checked", "missing", "extra", "different", "changing")
    if repair:
        columns += ("repaired",)
    print(f"{'kind':<10}" + "".join(f"{name:>11}" for name in columns))
    for kind, tally in report.tallies.items():
        print(f"{kind:<10}" + "".join(f"{getattr(tally, name):>11}" for name in columns))
    if report.differences:
        print(f"examples (first {len(report.differences)}):")
        for line in report.differences:
            print(f"  {line}")
    verdict = "clean" if report.ok else f"{report.difference_count} differences"
    print(f"verify: {verdict}")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds: {value}")
    return value


def _verify(args: argparse.Namespace, settings: IndexerSettings) -> int:
    configure_logging(args.log_level)
    kinds = KIND_ORDER if args.kind == "all" else (ObjectKind(args.kind),)
    scope = VerifyScope(
        kinds=kinds, project_id=args.project, sample=args.sample, api_keys=args.kind == "all"
    )
    try:
        report = asyncio.run(
            run_verify(
                settings,
                scope,
                repair=args.repair,
                settle_seconds=args.settle,
                examples=args.examples,
                terminal=sys.stderr.isatty(),
            )
        )
    except RepairRefused as error:
        print(f"indexer verify: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(orjson.dumps(_as_json(report), option=orjson.OPT_INDENT_2).decode())
    else:
        print_report(report, repair=args.repair)
    return 0 if report.ok else 1


def _as_json(report: VerifyReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "differences": report.difference_count,
        "kinds": {kind: vars(tally) for kind, tally in report.tallies.items()},
        "examples": report.differences,
    }


def add_command(subparsers: Any) -> None:
    verify = subparsers.add_parser(
        "verify",
        help="compare Postgres with Elasticsearch and Redis; --repair rewrites what differs",
        description="Compare every object in Postgres with its Elasticsearch document and its "
        "Redis values (objects, aliases, API keys, segment membership and counters), and look "
        "for objects the sinks hold that Postgres does not. Streams with bounded memory. A "
        "difference is reported once it is seen twice, --settle seconds apart, with the same "
        "stored versions (a change in flight is not a difference). Exit status: 0 clean, "
        f"1 differences found, 2 bad input. {API_KEY} records are checked with --kind all.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument(
        "--kind", choices=KIND_CHOICES, default="all", help="what to compare (default: all)"
    )
    verify.add_argument("--project", metavar="ID", help="compare one project's objects only")
    verify.add_argument(
        "--sample",
        type=_positive,
        metavar="N",
        help="compare N objects per kind drawn at random (skips the search for extra objects "
        "and the segment counters)",
    )
    verify.add_argument(
        "--repair",
        action="store_true",
        help="rewrite each confirmed difference from Postgres, versioned at the indexer's "
        "watermark (a newer change still wins)",
    )
    verify.add_argument(
        "--settle",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="wait before the second look at a difference (default: 1.0)",
    )
    verify.add_argument(
        "--examples",
        type=_positive,
        default=10,
        metavar="N",
        help="differences printed as examples (default: 10)",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--log-level", default="INFO", help="log level (default: INFO)")
    verify.set_defaults(handler=_verify)
