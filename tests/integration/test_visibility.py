"""The check that a decoded batch's transactions are visible before it is rebuilt
(``indexer/visibility.py``), against the real Postgres of the local stack.

A commit is decoded once its record is flushed, a moment before the transaction leaves the
running set. A rebuild in that window reads the old row and stores it at the new version.
The check missed the newest transaction, which a snapshot lists in no xip while it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from indexer.visibility import still_invisible, wait_until_visible

pytestmark = pytest.mark.services

Conn = psycopg.AsyncConnection[Any]
XID32 = 1 << 32


@pytest.fixture
async def checker(pg_dsn: str) -> AsyncIterator[Conn]:
    """The indexer's side: autocommit, a fresh snapshot per statement."""
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as connection:
        yield connection


async def _open_transaction(dsn: str) -> tuple[Conn, int]:
    """A connection inside a transaction that holds an xid; returns it and its 32-bit xid."""
    conn = await psycopg.AsyncConnection.connect(dsn)
    cursor = await conn.execute("SELECT pg_current_xact_id()::text::bigint")
    row = await cursor.fetchone()
    assert row is not None
    return conn, int(row[0]) % XID32


async def _completed_xid(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute("SELECT pg_current_xact_id()::text::bigint")
        row = await cursor.fetchone()
        await conn.commit()
    assert row is not None
    return int(row[0]) % XID32


async def test_the_newest_transaction_still_running_is_invisible(
    pg_dsn: str, checker: Conn
) -> None:
    # Nothing newer completes while it runs: a snapshot's xmax is at or below it, so it is
    # in no xip list (the check read only that list before).
    writer, xid = await _open_transaction(pg_dsn)
    try:
        cursor = await checker.execute(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
        )
        row = await cursor.fetchone()
        assert row is not None and int(row[0]) % XID32 <= xid  # the case under test
        assert await still_invisible(checker, [xid])
        assert await still_invisible(checker, [xid - 1 if xid > 3 else xid, xid])
    finally:
        await writer.rollback()
        await writer.close()


async def test_a_running_transaction_listed_in_the_snapshot_is_invisible(
    pg_dsn: str, checker: Conn
) -> None:
    writer, xid = await _open_transaction(pg_dsn)
    try:
        later = await _completed_xid(pg_dsn)  # xmax moves past the running one
        assert later != xid
        assert await still_invisible(checker, [xid])
        assert not await still_invisible(checker, [later])
    finally:
        await writer.rollback()
        await writer.close()


async def test_committed_transactions_are_visible(pg_dsn: str, checker: Conn) -> None:
    writer, xid = await _open_transaction(pg_dsn)
    await writer.commit()
    await writer.close()
    assert not await still_invisible(checker, [xid])
    assert not await still_invisible(checker, [await _completed_xid(pg_dsn), xid])


async def test_the_wait_ends_when_the_newest_transaction_commits(
    pg_dsn: str, checker: Conn
) -> None:
    writer, xid = await _open_transaction(pg_dsn)
    waiting = asyncio.create_task(wait_until_visible(checker, [xid]))
    try:
        await asyncio.sleep(0.2)
        assert not waiting.done()  # held while the transaction runs
        await writer.commit()
        await asyncio.wait_for(waiting, timeout=10)
    finally:
        waiting.cancel()
        await writer.close()
