"""``indexer migrate``: apply the contract schema (``indexer/migrations/*.sql``) in order.

Each pending file runs in its own transaction together with its row in ``schema_migrations``,
so a failed file leaves nothing behind and the next run starts again from it. A session
advisory lock serializes concurrent runners. Owns no other schema than that table. Runs as
the tables' owner (``LOYALTY_PG_ADMIN_DSN``), never as the indexer's role; ``indexer setup``
runs these migrations too, then grants the indexer's role what it needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from indexer.queries import query
from indexer.settings import PG_ADMIN_DSN, IndexerSettings

# Without a bound, connecting to a host that drops packets waits for the kernel's timeout.
CONNECT_TIMEOUT_SECONDS = 10


class MigrationError(Exception):
    """Migrations could not be applied; the message is one line, fit for a terminal."""


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    sql: str


def bundled_migrations() -> list[Migration]:
    """The package's migration files by name (``0001_...``), each named without ``.sql``."""
    folder = resources.files("indexer").joinpath("migrations")
    files = sorted(
        (entry for entry in folder.iterdir() if entry.name.endswith(".sql")),
        key=lambda entry: entry.name,
    )
    return [
        Migration(entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8"))
        for entry in files
    ]


def one_line(error: BaseException) -> str:
    """Driver messages span lines (hints, context); a terminal error gets one."""
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return text or type(error).__name__


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[tuple[Any, ...]]:
    """Connect with a bounded wait unless the DSN sets its own ``connect_timeout``."""
    options = psycopg.conninfo.conninfo_to_dict(dsn)
    if "connect_timeout" not in options:
        kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
    return psycopg.connect(dsn, **kwargs)


async def connect_async(dsn: str, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    """``connect``, for the async commands run as the admin (``indexer setup``, ``reshard``)."""
    options = psycopg.conninfo.conninfo_to_dict(dsn)
    if "connect_timeout" not in options:
        kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
    return await psycopg.AsyncConnection.connect(dsn, **kwargs)


def apply_migrations(dsn: str, migrations: Sequence[Migration] | None = None) -> list[str]:
    """Apply the pending migrations in order; return the names applied (empty when none).

    ``migrations`` defaults to the package's files; raises ``MigrationError`` on any failure.
    """
    candidates = bundled_migrations() if migrations is None else list(migrations)
    try:
        with connect(dsn, autocommit=True) as conn:
            conn.execute(query("migrate_lock"))
            try:
                return _apply_pending(conn, candidates)
            finally:
                if not conn.closed and not conn.broken:
                    conn.execute(query("migrate_unlock"))
    except psycopg.Error as error:
        raise MigrationError(one_line(error)) from error


def _apply_pending(
    conn: psycopg.Connection[tuple[Any, ...]], migrations: Sequence[Migration]
) -> list[str]:
    conn.execute(query("migrate_create_log"))
    done = {row[0] for row in conn.execute(query("migrate_applied"))}
    applied: list[str] = []
    for migration in migrations:
        if migration.name in done:
            continue
        try:
            with conn.transaction():
                # No parameters: the file may hold many statements and literal percent signs.
                conn.execute(migration.sql)
                conn.execute(query("migrate_record"), {"name": migration.name})
        except psycopg.Error as error:
            raise MigrationError(f"{migration.name}: {one_line(error)}") from error
        applied.append(migration.name)
    return applied


def add_command(subparsers: Any) -> None:
    """Register ``indexer migrate`` on the ``indexer`` command's sub-parsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "migrate",
        help="apply the source schema migrations",
        description="Apply the pending migrations of the source schema, in order.",
    )
    add_dsn_argument(parser)
    parser.set_defaults(handler=run_migrate)


def add_dsn_argument(parser: argparse.ArgumentParser) -> None:
    """``--dsn``, which overrides the setting ``LOYALTY_PG_ADMIN_DSN`` (the tables' owner)."""
    parser.add_argument(
        "--dsn",
        help="Postgres connection string of the tables' owner "
        f"(default: ${PG_ADMIN_DSN.variable} or {PG_ADMIN_DSN.default_text})",
    )


def run_migrate(args: argparse.Namespace, settings: IndexerSettings) -> int:
    try:
        applied = apply_migrations(args.dsn or settings.pg_admin_dsn)
    except MigrationError as error:
        print(f"indexer migrate: {error}", file=sys.stderr)
        return 1
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print("schema is up to date")
    return 0
