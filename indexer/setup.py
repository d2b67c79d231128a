"""``indexer setup``: the database as this version of the indexer needs it, made by its owner.

The indexer runs as a role of its own that is not a superuser (``LOYALTY_PG_DSN``;
``loyalty_indexer`` on the local stack). What that role needs and may not do itself (a
publication for a table needs the table's owner) is done here, with the admin's connection
string (``LOYALTY_PG_ADMIN_DSN`` or ``--dsn``: the owner of the contract tables), every step
idempotent:

1. the pending migrations (``indexer migrate``), so what follows finds every table;
2. the role, when it does not exist and the indexer's connection string carries a password:
   created ``LOGIN REPLICATION``, nothing more;
3. ``CONNECT`` on the database, ``USAGE`` on schema ``public`` and ``SELECT`` on its tables,
   now and (by the admin's default privileges) on every table the admin creates there later;
4. schema ``loyalty_indexer`` (the indexer's own tables) when missing, with ``USAGE`` and
   ``CREATE`` on it and every privilege on its tables and sequences, now and later;
5. the publication (``LOYALTY_PUBLICATION``) for the contract tables, or the tables it lacks.

Steps 2 to 5 run in one transaction, run again (a bounded number of times) when Postgres
breaks a deadlock by failing it: the publication locks the tables one by one, and autovacuum
may hold one of them and wait for this transaction. Replication slots need no grant: the role's
``REPLICATION`` attribute covers creating, reading, advancing and dropping logical slots, and
``pg_replication_slots`` and the WAL position functions are readable by every role.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import psycopg
from psycopg import sql

from indexer.changes import WATCHED_TABLES
from indexer.errors import IndexerError
from indexer.migrate import (
    MigrationError,
    add_dsn_argument,
    apply_migrations,
    connect_async,
    one_line,
)
from indexer.retry import Backoff
from indexer.settings import PG_DSN, IndexerSettings
from indexer.slot import ensure_publication

# The indexer's own schema (its tables come with the migrations); made here when missing so
# the grants below always have it. A migration creating it must say IF NOT EXISTS.
INDEXER_SCHEMA = "loyalty_indexer"
CONTRACT_SCHEMA = "public"
# Steps 2 to 5 are run again when Postgres broke a deadlock by failing them, at most this many
# times in all, after a jittered backoff from this base.
DEADLOCK_ATTEMPTS = 5
DEADLOCK_BACKOFF_SECONDS = 0.2

AsyncConn = psycopg.AsyncConnection[Any]


class SetupError(Exception):
    """Setup could not be completed; the message is one line, fit for a terminal."""


def role_of(dsn: str) -> str | None:
    """The user a connection string names (None when it names none)."""
    user = psycopg.conninfo.conninfo_to_dict(dsn).get("user")
    return str(user) if user else None


def password_of(dsn: str) -> str | None:
    """The password a connection string carries (None when it carries none)."""
    password = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
    return str(password) if password else None


async def setup_access(
    conn: AsyncConn, role: str, publication: str, *, password: str | None = None
) -> list[str]:
    """Steps 2 to 5 on ``conn`` (the admin's, autocommit); returns what was done, one line
    each. ``password`` creates ``role`` when it does not exist."""
    done: list[str] = []
    async with conn.transaction():
        cursor = await conn.execute(
            "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = %s", (role,)
        )
        found = await cursor.fetchone()
        if found is None:
            if password is None:
                raise SetupError(
                    f"role {role!r} does not exist and ${PG_DSN.variable} carries no password "
                    f"to create it with: CREATE ROLE {role} LOGIN REPLICATION PASSWORD '...'"
                )
            await conn.execute(
                sql.SQL("CREATE ROLE {} WITH LOGIN REPLICATION PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )
            done.append(f"created role {role} (LOGIN REPLICATION)")
            found = (False, True)
        superuser, replication = found
        cursor = await conn.execute("SELECT current_user, current_database()")
        row = await cursor.fetchone()
        assert row is not None
        admin, database = row
        if role == admin:
            done.append(f"role {role} is the admin itself: nothing to grant")
        else:
            await _grant(conn, role, admin, database)
            done.append(
                f"granted {role}: SELECT on the tables of schema {CONTRACT_SCHEMA}, "
                f"all privileges in schema {INDEXER_SCHEMA} (now and on later tables)"
            )
        if superuser:
            done.append(f"note: role {role} is a superuser; the indexer needs none of that")
        elif not replication:
            done.append(
                f"warning: role {role} lacks REPLICATION and cannot use its slot "
                f"(ALTER ROLE {role} REPLICATION, or the provider's replication role)"
            )
        cursor = await conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = %s)", (publication,)
        )
        existed = await cursor.fetchone()
        added = await ensure_publication(conn, publication, WATCHED_TABLES)
        if not (existed and existed[0]):
            done.append(f"publication {publication}: created for {', '.join(added)}")
        elif added:
            done.append(f"publication {publication}: added {', '.join(added)}")
        else:
            done.append(f"publication {publication}: up to date")
    return done


async def _grant(conn: AsyncConn, role: str, admin: str, database: str) -> None:
    names = {
        "role": sql.Identifier(role),
        "admin": sql.Identifier(admin),
        "database": sql.Identifier(database),
        "contract": sql.Identifier(CONTRACT_SCHEMA),
        "own": sql.Identifier(INDEXER_SCHEMA),
    }
    statements = (
        "GRANT CONNECT ON DATABASE {database} TO {role}",
        "GRANT USAGE ON SCHEMA {contract} TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA {contract} TO {role}",
        "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA {contract} "
        "GRANT SELECT ON TABLES TO {role}",
        "CREATE SCHEMA IF NOT EXISTS {own}",
        "GRANT USAGE, CREATE ON SCHEMA {own} TO {role}",
        "GRANT ALL ON ALL TABLES IN SCHEMA {own} TO {role}",
        "GRANT ALL ON ALL SEQUENCES IN SCHEMA {own} TO {role}",
        "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA {own} GRANT ALL ON TABLES TO {role}",
        "ALTER DEFAULT PRIVILEGES FOR ROLE {admin} IN SCHEMA {own} "
        "GRANT ALL ON SEQUENCES TO {role}",
    )
    for statement in statements:
        await conn.execute(sql.SQL(statement).format(**names))


async def setup_database(
    admin_dsn: str, role: str, publication: str, *, password: str | None = None
) -> list[str]:
    """Every step, as the admin at ``admin_dsn``; returns what was done, one line each.
    Raises ``SetupError`` (or ``MigrationError``) with a one-line message."""
    done = [f"applied {name}" for name in await asyncio.to_thread(apply_migrations, admin_dsn)]
    backoff = Backoff(base=DEADLOCK_BACKOFF_SECONDS, cap=1.0)
    for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
        try:
            async with await connect_async(admin_dsn, autocommit=True) as conn:
                done.extend(await setup_access(conn, role, publication, password=password))
            return done
        except (psycopg.Error, IndexerError) as error:
            # A publication locks each of its tables in turn, and autovacuum (ANALYZE after a
            # bulk load) or an application may lock them in another order: Postgres then
            # breaks the deadlock by failing one side. The transaction left nothing behind
            # and every step is idempotent, so it is run again.
            if attempt < DEADLOCK_ATTEMPTS and _is_deadlock(error):
                await asyncio.sleep(backoff.next_delay())
                continue
            if isinstance(error, psycopg.Error):
                raise SetupError(one_line(error)) from error
            raise SetupError(str(error).splitlines()[0]) from error
    raise AssertionError("unreachable: the last attempt returns or raises")


def _is_deadlock(error: BaseException) -> bool:
    """Whether ``error`` is, or was caused by, Postgres breaking a deadlock."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, psycopg.errors.DeadlockDetected):
            return True
        cause = cause.__cause__
    return False


def add_command(subparsers: Any) -> None:
    """Register ``indexer setup`` on the ``indexer`` command's sub-parsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "setup",
        help="as the tables' owner: migrate, grant the indexer's role, create the publication",
        description="Run as the owner of the contract tables (the admin): apply the pending "
        "migrations, create the indexer's role if missing (when its connection string carries "
        "a password), grant it SELECT on the contract tables and every privilege in schema "
        f"{INDEXER_SCHEMA}, and create the publication. Idempotent.",
    )
    add_dsn_argument(parser)
    parser.add_argument(
        "--role",
        help=f"the indexer's role (default: the user of ${PG_DSN.variable})",
    )
    parser.set_defaults(handler=run_setup)


def run_setup(args: argparse.Namespace, settings: IndexerSettings) -> int:
    role = args.role or role_of(settings.pg_dsn)
    if not role:
        print(
            f"indexer setup: ${PG_DSN.variable} names no user: give the indexer's role with --role",
            file=sys.stderr,
        )
        return 2
    password = password_of(settings.pg_dsn) if role == role_of(settings.pg_dsn) else None
    try:
        done = asyncio.run(
            setup_database(
                args.dsn or settings.pg_admin_dsn, role, settings.publication, password=password
            )
        )
    except (MigrationError, SetupError) as error:
        print(f"indexer setup: {error}", file=sys.stderr)
        return 1
    for line in done:
        print(line)
    return 0
