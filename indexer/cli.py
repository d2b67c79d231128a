"""The ``indexer`` command: one sub-command per module that owns the work.

The settings are read here, once, after the arguments (so ``--help`` works whatever the
environment holds), and passed to the sub-command's handler. An invalid variable ends the
command with one line on stderr and status 2, like a bad argument.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cache.errors import StoreError
from indexer import (
    commands,
    migrate,
    quarantine,
    reindex_command,
    reshard,
    seed,
    setup,
    verify_command,
)
from indexer.errors import IndexerError
from indexer.settings import IndexerSettings, SettingsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="indexer",
        description="CDC indexer of the loyalty read path: Postgres -> Elasticsearch and Redis.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (
        commands, migrate, seed, setup, quarantine, verify_command, reindex_command, reshard
    ):
        module.add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = IndexerSettings.from_env()
    except SettingsError as error:
        print(f"indexer {args.command}: {error}", file=sys.stderr)
        return 2
    try:
        return int(args.handler(args, settings))
    except (StoreError, IndexerError) as error:
        # Every store's boundary already says what failed; one line, no traceback.
        print(f"indexer {args.command}: {error}".splitlines()[0], file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("indexer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
