"""The ``indexer`` command: one sub-command per module that owns the work."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from indexer import commands, migrate, seed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="indexer",
        description="CDC indexer of the loyalty read path: Postgres -> Elasticsearch and Redis.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (commands, migrate, seed):
        module.add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("indexer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
