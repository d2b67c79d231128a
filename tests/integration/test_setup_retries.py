"""``indexer setup`` when Postgres breaks a deadlock by failing its transaction (the
publication locks the tables one by one; autovacuum's ANALYZE after a bulk load may hold one
and wait for setup's transaction): the transaction is run again, a bounded number of times;
any other error ends it at once with one line."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from indexer import setup
from indexer.errors import SourceUnavailable
from stack.config import PG_INDEXER_ROLE

pytestmark = pytest.mark.services


def deadlock() -> SourceUnavailable:
    """What a failed publication step raises: the driver's error wrapped at the boundary."""
    try:
        raise psycopg.errors.DeadlockDetected("deadlock detected")
    except psycopg.Error as error:
        try:
            raise SourceUnavailable("ensure publication 'p': deadlock detected") from error
        except SourceUnavailable as wrapped:
            return wrapped


def failing_first(monkeypatch: pytest.MonkeyPatch, errors: list[BaseException]) -> list[int]:
    """``setup_access`` raises ``errors`` in turn, then runs; the attempts are counted."""
    attempts: list[int] = []
    real = setup.setup_access

    async def flaky(conn: Any, *args: Any, **kwargs: Any) -> list[str]:
        attempts.append(1)
        if len(attempts) <= len(errors):
            raise errors[len(attempts) - 1]
        return await real(conn, *args, **kwargs)

    monkeypatch.setattr(setup, "setup_access", flaky)
    monkeypatch.setattr(setup, "DEADLOCK_BACKOFF_SECONDS", 0.01)
    return attempts


async def publication_tables(dsn: str, publication: str) -> set[str]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = %s", (publication,)
        )
        return {str(row[0]) for row in await cursor.fetchall()}


async def test_a_deadlock_is_run_again_until_setup_completes(
    pg_dsn: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = failing_first(
        monkeypatch, [deadlock(), psycopg.errors.DeadlockDetected("deadlock detected")]
    )
    publication = f"pub_{unique_name}"
    done = await setup.setup_database(pg_dsn, PG_INDEXER_ROLE, publication)
    assert len(attempts) == 3
    assert any(publication in line for line in done)
    assert {"vouchers", "customers", "redemptions"} <= await publication_tables(pg_dsn, publication)


async def test_deadlocks_are_retried_a_bounded_number_of_times(
    pg_dsn: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = failing_first(monkeypatch, [deadlock()] * 10)
    with pytest.raises(setup.SetupError, match="deadlock detected"):
        await setup.setup_database(pg_dsn, PG_INDEXER_ROLE, f"pub_{unique_name}")
    assert len(attempts) == setup.DEADLOCK_ATTEMPTS


async def test_any_other_error_ends_setup_at_once(
    pg_dsn: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = psycopg.errors.InsufficientPrivilege("permission denied for table vouchers")
    attempts = failing_first(monkeypatch, [refused])
    with pytest.raises(setup.SetupError, match="permission denied"):
        await setup.setup_database(pg_dsn, PG_INDEXER_ROLE, f"pub_{unique_name}")
    assert len(attempts) == 1
