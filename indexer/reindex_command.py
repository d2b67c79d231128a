"""The ``indexer reindex`` sub-command: options checked here, the work in ``indexer.reindex``.

Exit status: 0 done (or aborted), 2 bad input or a reindex that cannot go on as asked
(the message says what to do), 3 stopped by SIGTERM or SIGINT (``--resume`` goes on).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from prometheus_client import start_http_server

from cache.logs import configure_logging
from cache.types import ObjectKind
from indexer.commands import open_clients
from indexer.reindex import (
    KIND_ORDER,
    Outcome,
    Reindexer,
    ReindexError,
    ReindexPlan,
    ReindexResult,
)
from indexer.reindex_state import Source
from indexer.settings import ENVIRONMENT_HELP, IndexerSettings

log = logging.getLogger("indexer")

EXIT_BAD_INPUT = 2
EXIT_PAUSED = 3

_KIND_CHOICES = ("all", *(str(kind) for kind in KIND_ORDER))


def kinds_of(choice: str) -> tuple[ObjectKind, ...]:
    return KIND_ORDER if choice == "all" else (ObjectKind(choice),)


def check_options(args: argparse.Namespace) -> str | None:
    """What is wrong with this combination of options (None: nothing)."""
    if args.project is not None:
        if args.resume or args.abort:
            return "--project rebuilds in place: it has nothing to resume or abort"
        if args.source == Source.INDEX:
            return "--project reads the source: --source index applies to full reindexes"
        if not args.project.strip():
            return "--project needs a project id"
    if (args.resume or args.abort) and (args.kind is not None or args.source is not None):
        return "--resume and --abort go on with the checkpoint's kinds and source"
    if args.max_rows_per_second is not None and args.max_rows_per_second < 0:
        return "--max-rows-per-second must be 0 (no cap) or more"
    return None


async def _reindex(args: argparse.Namespace, settings: IndexerSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # The page in flight is written and checkpointed, then the command exits.
        loop.add_signal_handler(signum, stop.set)
    cap = (
        settings.load_max_rows_per_second
        if args.max_rows_per_second is None
        else args.max_rows_per_second
    )
    async with open_clients(settings) as clients:
        reindexer = Reindexer.for_settings(
            settings, clients.search, clients.cache, clients.redis, stop=stop
        )
        if args.abort:
            removed = await reindexer.abort()
            print("reindex aborted: " + (", ".join(removed) if removed else "nothing to remove"))
            return 0
        if args.project is not None:
            written, report = await reindexer.rebuild_project(
                args.project, kinds_of(args.kind or "all")
            )
            print(
                f"project {args.project} rebuilt in place: {written} objects rewritten, "
                f"{sum(t.repaired for t in report.tallies.values())} divergent objects "
                f"repaired after it"
            )
            return 0
        if args.resume:
            result = await reindexer.resume(cap)
        else:
            plan = ReindexPlan(
                kinds=kinds_of(args.kind or "all"),
                source=Source(args.source or Source.POSTGRES),
                max_rows_per_second=cap,
            )
            result = await reindexer.start(plan)
    return _report(result)


def _report(result: ReindexResult) -> int:
    if result.outcome is Outcome.PAUSED:
        print(
            f"reindex paused: generation {result.generation}, {result.rows_read} rows read "
            f"by this run; run `indexer reindex --resume` to go on"
        )
        return EXIT_PAUSED
    print(
        f"reindex complete: generation {result.generation} serves; {result.rows_read} rows "
        f"read by this run, {result.rows_skipped} skipped (loaded before the checkpoint), "
        f"in {result.seconds:.1f} s"
    )
    return 0


def _run(args: argparse.Namespace, settings: IndexerSettings) -> int:
    problem = check_options(args)
    if problem is not None:
        print(f"indexer reindex: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    configure_logging(args.log_level)
    if settings.reindex_metrics_port:
        try:
            start_http_server(settings.reindex_metrics_port, addr=settings.metrics_host)
        except OSError as error:
            log.warning("reindex metrics not served", extra={"reason": str(error)})
    try:
        return asyncio.run(_reindex(args, settings))
    except ReindexError as error:
        print(f"indexer reindex: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def add_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "reindex",
        help="rebuild indices into a new generation while the old one serves",
        description=(
            "Build a new generation of the indices of some kinds beside the serving one "
            "(from a snapshot of the source, or copied from the serving generation), catch "
            "it up with the change stream through a slot of its own while `indexer run` "
            "keeps applying changes, then move the aliases at once. With --project, rewrite "
            "one tenant's objects in place instead and remove those the source no longer "
            "has. A checkpoint is saved after every page: --resume goes on after a crash or "
            "a signal, --abort removes a half-built generation. "
            "Exit status: 0 done, 2 bad input, 3 stopped by a signal (resumable)."
        ),
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--kind", choices=_KIND_CHOICES, default=None, help="kind of documents (default: all)"
    )
    parser.add_argument(
        "--project", metavar="ID", default=None, help="rebuild one project's objects in place"
    )
    parser.add_argument(
        "--source",
        choices=[str(source) for source in Source],
        default=None,
        help="read a snapshot of the tables (postgres, default) or copy the serving "
        "generation's documents (index: a mapping change, no table read)",
    )
    parser.add_argument(
        "--max-rows-per-second",
        type=int,
        default=None,
        metavar="N",
        help="cap on rows read per second (default: LOYALTY_LOAD_MAX_ROWS_PER_SECOND; 0: none)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="go on from the checkpoint")
    mode.add_argument(
        "--abort", action="store_true", help="remove the reindex in progress and its generation"
    )
    parser.add_argument("--log-level", default="INFO", help="log level (default: INFO)")
    parser.set_defaults(handler=_run)
