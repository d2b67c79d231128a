"""A commit whose record starts exactly where the slot was confirmed is still applied.

The capture loop peeks up to the WAL flush position and, when the batch comes back short,
confirms the slot there (the heartbeat). When the flush position is the first byte of a
commit record still to be written (the transaction's changes flushed by another session's
commit, its own commit not yet), the peek stops before that commit and the slot is confirmed
at its first byte. Postgres decodes a commit that starts at the confirmed position (it skips
only those starting before it); this test makes that case on purpose, several times, and
checks that every change reaches both sinks.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from cache.types import Lsn
from indexer.slot import slot_status
from tests.fixtures.indexer import IndexerHarness

pytestmark = pytest.mark.services

ATTEMPTS = 12


async def _flush_position(conn: psycopg.AsyncConnection[Any]) -> Lsn:
    cursor = await conn.execute("SELECT pg_current_wal_flush_lsn()::text")
    row = await cursor.fetchone()
    assert row is not None
    return Lsn.parse(row[0])


async def test_a_commit_starting_at_the_confirmed_position_is_applied(
    harness: IndexerHarness, pg_dsn: str
) -> None:
    await harness.execute("INSERT INTO projects (id, name) VALUES ('p1', 'One')")
    await harness.execute(
        "INSERT INTO customers (id, project_id, name) VALUES ('cust_1', 'p1', 'name 0')"
    )
    # Not in the publication: its commit only flushes the WAL written before it.
    await harness.execute("CREATE TABLE flush_marks (id bigserial PRIMARY KEY)")
    await harness.catch_up()
    exact = 0
    async with await psycopg.AsyncConnection.connect(
        pg_dsn, autocommit=True, options="-c synchronous_commit=on"
    ) as flusher:
        for attempt in range(1, ATTEMPTS + 1):
            async with await psycopg.AsyncConnection.connect(pg_dsn) as writer:
                await writer.execute(
                    "UPDATE customers SET name = %s WHERE id = 'cust_1'", (f"name {attempt}",)
                )
                await flusher.execute("INSERT INTO flush_marks DEFAULT VALUES")
                flushed = await _flush_position(flusher)
                await harness.indexer.step()  # peeks up to ``flushed``: nothing committed
                confirmed = await slot_status(harness.db, harness.settings.slot_name)
                await writer.commit()
            await harness.catch_up()
            envelope = await harness.clients.cache.store.get_object("p1", "customer", "cust_1")
            assert envelope is not None
            if confirmed.confirmed_flush_lsn == flushed and envelope.version == int(flushed):
                exact += 1  # the commit record started at the confirmed position
            document = await harness.es_doc("customer", "cust_1")
            assert document is not None
            assert (attempt, envelope.data["name"], document["doc"]["name"]) == (
                attempt,
                f"name {attempt}",
                f"name {attempt}",
            )
    # Other sessions of the server may write WAL in between; an attempt must still have
    # made the case under test.
    assert exact >= 1, "no commit started at the confirmed position"
    report = await harness.verify()
    assert report.ok, report.differences
