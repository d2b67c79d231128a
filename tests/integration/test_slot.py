"""Integration tests of ``indexer/slot.py`` against the real Postgres of the local stack.

Each test works in its own migrated database (``pg_dsn``), with its own slot and
publication, and drops the slot it created. Writes use ``synchronous_commit = on`` so a
commit is flushed, and therefore decodable, by the time it returns.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import pytest

from cache.types import Lsn
from indexer.errors import SlotError, SourceUnavailable
from indexer.pgoutput import ChangeDecoder, Transaction
from indexer.slot import (
    advance_slot,
    create_slot_with_snapshot,
    current_wal_lsn,
    drop_publication,
    drop_slot,
    ensure_publication,
    open_snapshot_reader,
    peek_change_pages,
    peek_changes,
    slot_exists,
    slot_status,
)

pytestmark = pytest.mark.services

Conn = psycopg.AsyncConnection[Any]


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[Conn]:
    """The indexer's side: autocommit, as the capture loop runs it."""
    async with await psycopg.AsyncConnection.connect(
        pg_dsn, autocommit=True, options="-c timezone=UTC"
    ) as connection:
        yield connection


@pytest.fixture
async def writer(pg_dsn: str) -> AsyncIterator[Conn]:
    """The platform's side; each commit is flushed before it returns."""
    async with await psycopg.AsyncConnection.connect(
        pg_dsn, autocommit=True, options="-c synchronous_commit=on"
    ) as connection:
        yield connection


@pytest.fixture
def publication(unique_name: str) -> str:
    return f"pub_{unique_name}"


@pytest.fixture
async def slot(conn: Conn, unique_name: str) -> AsyncIterator[str]:
    """A unique slot name; the slot, if the test created it, is dropped afterwards."""
    name = f"slot_{unique_name}"
    try:
        yield name
    finally:
        await drop_slot(conn, name)


async def commit(writer: Conn, *statements: str) -> None:
    """Run the statements as one transaction."""
    async with writer.transaction():
        for statement in statements:
            await writer.execute(statement)


async def add_projects(writer: Conn, *ids: str) -> None:
    await commit(writer, *(f"INSERT INTO projects (id, name) VALUES ('{i}', 'n{i}')" for i in ids))


async def create_slot(dsn: str, slot: str) -> Lsn:
    async with create_slot_with_snapshot(dsn, slot) as (point, _snapshot):
        return point


async def peek(conn: Conn, slot: str, publication: str, n: int = 1000,
               upto_lsn: Lsn | None = None) -> list[Transaction]:
    rows = await peek_changes(conn, slot, publication, n, upto_lsn=upto_lsn)
    return ChangeDecoder().feed_all(data for _, _, data in rows)


def row(values: dict[str, Any] | None) -> tuple[Any, ...] | None:
    return None if values is None else (values["id"], values["name"])


def inserted_ids(transactions: Sequence[Transaction]) -> list[list[str]]:
    return [[c.new["id"] for c in t.changes if c.new is not None] for t in transactions]


async def test_ensure_publication_creates_then_adds_missing_tables(
    conn: Conn, publication: str
) -> None:
    assert await ensure_publication(conn, publication, ["projects"]) == ["public.projects"]
    assert await ensure_publication(conn, publication, ["public.projects", "customers"]) == [
        "public.customers"
    ]
    assert await ensure_publication(conn, publication, ["customers", "projects"]) == []
    cursor = await conn.execute(
        "SELECT tablename FROM pg_publication_tables WHERE pubname = %s ORDER BY 1",
        (publication,))
    assert await cursor.fetchall() == [("customers",), ("projects",)]
    await drop_publication(conn, publication)
    await drop_publication(conn, publication)  # already gone: no error
    assert await ensure_publication(conn, publication, ["projects"]) == ["public.projects"]
    with pytest.raises(SlotError, match="no_such_table"):
        await ensure_publication(conn, publication, ["no_such_table"])


async def test_snapshot_then_stream_has_no_gap_and_no_overlap(
    conn: Conn, writer: Conn, pg_dsn: str, slot: str, publication: str
) -> None:
    await ensure_publication(conn, publication, ["projects"])
    await add_projects(writer, "p1", "p2")
    async with create_slot_with_snapshot(pg_dsn, slot) as (point, snapshot):
        # Committed after the slot's consistent point: only the stream may show these.
        await add_projects(writer, "p3")
        await commit(writer, "UPDATE projects SET name = 'renamed' WHERE id = 'p1'")
        async with await psycopg.AsyncConnection.connect(pg_dsn) as reader:
            await open_snapshot_reader(reader, snapshot)
            cursor = await reader.execute("SELECT id, name FROM projects ORDER BY id")
            assert await cursor.fetchall() == [("p1", "np1"), ("p2", "np2")]
            await reader.rollback()
    assert (await slot_status(conn, slot)).confirmed_flush_lsn == point

    found = await peek(conn, slot, publication)
    assert [[(c.op, row(c.new), row(c.old)) for c in t.changes] for t in found] == [
        [("insert", ("p3", "np3"), None)],
        [("update", ("p1", "renamed"), ("p1", "np1"))],
    ]
    assert all(t.commit_lsn > point for t in found)

    # The snapshot lives only as long as the slot's replication connection.
    async with await psycopg.AsyncConnection.connect(pg_dsn) as late:
        with pytest.raises(SlotError, match="snapshot"):
            await open_snapshot_reader(late, snapshot)


@pytest.mark.parametrize("autocommit", [True, False])
async def test_snapshot_reader_is_repeatable_read_and_read_only(
    pg_dsn: str, slot: str, autocommit: bool
) -> None:
    async with (
        create_slot_with_snapshot(pg_dsn, slot) as (_point, snapshot),
        await psycopg.AsyncConnection.connect(pg_dsn, autocommit=autocommit) as reader,
    ):
        await open_snapshot_reader(reader, snapshot)
        cursor = await reader.execute(
            "SELECT current_setting('transaction_isolation'),"
            " current_setting('transaction_read_only')")
        assert await cursor.fetchone() == ("repeatable read", "on")
        with pytest.raises(SlotError, match="idle"):
            await open_snapshot_reader(reader, snapshot)
        await reader.rollback()


async def test_peek_is_bounded_by_whole_transactions(
    conn: Conn, writer: Conn, pg_dsn: str, slot: str, publication: str
) -> None:
    await ensure_publication(conn, publication, ["projects"])
    await create_slot(pg_dsn, slot)
    await add_projects(writer, "a1", "a2", "a3")
    await add_projects(writer, "b1", "b2", "b3")
    await add_projects(writer, "c1", "c2", "c3")

    # upto_nchanges counts messages and is checked only after each commit: asking for one
    # returns the whole first transaction (Begin, Relation, 3 Inserts, Commit).
    first = await peek_changes(conn, slot, publication, 1)
    assert len(first) == 6
    assert inserted_ids(ChangeDecoder().feed_all(d for _, _, d in first)) == [["a1", "a2", "a3"]]
    # 6 rows are below 7: the second transaction (5 more rows) is added, then it stops.
    assert inserted_ids(await peek(conn, slot, publication, 7)) == [
        ["a1", "a2", "a3"], ["b1", "b2", "b3"]]
    everything = await peek(conn, slot, publication)
    assert inserted_ids(everything) == [["a1", "a2", "a3"], ["b1", "b2", "b3"],
                                        ["c1", "c2", "c3"]]
    # A peek consumes nothing; upto_lsn stops after the transaction that reaches it.
    assert await peek_changes(conn, slot, publication, 1) == first
    assert inserted_ids(await peek(conn, slot, publication, upto_lsn=everything[1].end_lsn)) == [
        ["a1", "a2", "a3"], ["b1", "b2", "b3"]]


async def test_advance_then_peek_returns_only_newer_changes(
    conn: Conn, writer: Conn, pg_dsn: str, slot: str, publication: str
) -> None:
    await ensure_publication(conn, publication, ["projects"])
    await create_slot(pg_dsn, slot)
    for name in ("x", "y", "z"):
        await add_projects(writer, name)
    x, y, _z = await peek(conn, slot, publication)

    assert await advance_slot(conn, slot, x.end_lsn) == x.end_lsn
    assert (await slot_status(conn, slot)).confirmed_flush_lsn == x.end_lsn
    assert inserted_ids(await peek(conn, slot, publication)) == [["y"], ["z"]]

    # Confirming a commit_lsn (where the commit record starts) is not enough: the
    # transaction comes again. Its end_lsn is the position that consumes it.
    await advance_slot(conn, slot, y.commit_lsn)
    assert inserted_ids(await peek(conn, slot, publication)) == [["y"], ["z"]]
    await advance_slot(conn, slot, y.end_lsn)
    assert inserted_ids(await peek(conn, slot, publication)) == [["z"]]


async def test_advancing_backwards_is_a_no_op(
    conn: Conn, writer: Conn, pg_dsn: str, slot: str, publication: str
) -> None:
    await ensure_publication(conn, publication, ["projects"])
    point = await create_slot(pg_dsn, slot)
    await add_projects(writer, "x")
    await add_projects(writer, "y")
    x, y = await peek(conn, slot, publication)
    assert await advance_slot(conn, slot, y.end_lsn) == y.end_lsn
    for target in (y.end_lsn, x.end_lsn, point, Lsn.ZERO):
        assert await advance_slot(conn, slot, target) == y.end_lsn
    assert (await slot_status(conn, slot)).confirmed_flush_lsn == y.end_lsn
    assert await peek(conn, slot, publication) == []


async def test_advance_is_not_undone_by_a_rollback(
    conn: Conn, writer: Conn, pg_dsn: str, slot: str, publication: str
) -> None:
    await ensure_publication(conn, publication, ["projects"])
    await create_slot(pg_dsn, slot)
    await add_projects(writer, "x")
    (x,) = await peek(conn, slot, publication)
    async with conn.transaction(force_rollback=True):
        await advance_slot(conn, slot, x.end_lsn)
    assert (await slot_status(conn, slot)).confirmed_flush_lsn == x.end_lsn


async def test_heartbeat_moves_the_slot_while_watched_tables_are_idle(
    conn: Conn, writer: Conn, pg_dsn: str, slot: str, publication: str
) -> None:
    await ensure_publication(conn, publication, ["customers"])  # projects is not watched
    point = await create_slot(pg_dsn, slot)
    for i in range(5):
        await add_projects(writer, f"h{i}")
    target = await current_wal_lsn(conn)
    assert target > point
    assert await peek_changes(conn, slot, publication, 100, upto_lsn=target) == []
    assert await advance_slot(conn, slot, target) == target
    status = await slot_status(conn, slot)
    assert status.confirmed_flush_lsn == target
    assert status.lag_bytes == status.wal_lsn - target


async def test_heartbeat_target_never_skips_a_watched_commit(
    conn: Conn, writer: Conn, pg_dsn: str, slot: str, publication: str
) -> None:
    # The capture loop's step: capture the target, peek up to it, advance there when the
    # peek came back short. Every commit flushed before the target must be in the peek.
    await ensure_publication(conn, publication, ["projects"])
    await create_slot(pg_dsn, slot)
    seen: list[list[str]] = []
    for i in range(20):
        await add_projects(writer, f"w{i}")
        target = await current_wal_lsn(conn)
        found = await peek(conn, slot, publication, 1000, upto_lsn=target)
        seen += inserted_ids(found)
        await advance_slot(conn, slot, target)
    assert seen == [[f"w{i}"] for i in range(20)]


async def test_slot_exists_status_and_drop(conn: Conn, pg_dsn: str, slot: str) -> None:
    assert not await slot_exists(conn, slot)
    point = await create_slot(pg_dsn, slot)
    assert await slot_exists(conn, slot)
    status = await slot_status(conn, slot)
    assert status.slot_name == slot and not status.active
    assert status.confirmed_flush_lsn == point
    assert status.restart_lsn is not None and status.restart_lsn <= point <= status.wal_lsn
    assert status.wal_status == "reserved"
    assert status.retained_wal_bytes == status.wal_lsn - status.restart_lsn
    assert status.lag_bytes == status.wal_lsn - point
    assert await drop_slot(conn, slot)
    assert not await slot_exists(conn, slot)
    assert not await drop_slot(conn, slot)
    with pytest.raises(SlotError, match="does not exist"):
        await slot_status(conn, slot)


async def test_driver_errors_are_wrapped(conn: Conn, pg_dsn: str, slot: str,
                                         publication: str) -> None:
    with pytest.raises(SlotError, match="does not exist"):
        await peek_changes(conn, slot, publication, 10)
    with pytest.raises(SlotError, match="does not exist"):
        await advance_slot(conn, slot, Lsn(1))
    await create_slot(pg_dsn, slot)
    with pytest.raises(SlotError, match="already exists"):
        await create_slot(pg_dsn, slot)
    with pytest.raises(SlotError, match="invalid slot name"):
        await create_slot(pg_dsn, "Not-Valid")
    with pytest.raises(SlotError, match="invalid publication name"):
        await peek_changes(conn, slot, "Loyalty", 10)
    unreachable = psycopg.conninfo.make_conninfo(pg_dsn, port=1, connect_timeout=2)
    with pytest.raises(SourceUnavailable):
        await create_slot(unreachable, slot)
    closed = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    await closed.close()
    with pytest.raises(SourceUnavailable):
        await current_wal_lsn(closed)



@pytest.mark.parametrize("read_pages", [1, 2], ids=["mid-read", "after-reading"])
async def test_a_source_gone_mid_batch_is_an_outage_and_leaves_no_open_cursor(
    conn: Conn, writer: Conn, pg_dsn: str, slot: str, publication: str, read_pages: int
) -> None:
    """The source shuts down while a batch is being read or applied: leaving the block talks
    to the server (CLOSE, then the end of the transaction) and fails. That failure is an
    outage the capture loop retries, not a driver error that ends it; and the cursor ends
    closed, not left for the collector to find open."""
    await ensure_publication(conn, publication, ["projects"])
    await create_slot(pg_dsn, slot)
    await add_projects(writer, "a1", "a2", "a3")
    peeker = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    upto = await current_wal_lsn(conn)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SourceUnavailable, match="peek slot"):
            async with peek_change_pages(peeker, slot, publication, 100, upto, 3) as pages:
                read = 0
                async for _page in pages:
                    read += 1
                    if read == read_pages:
                        await conn.execute(
                            "SELECT pg_terminate_backend(%s)", (peeker.info.backend_pid,)
                        )
                        if read_pages == 1:
                            continue  # the next page's read meets the closed connection
                        break
        gc.collect()
    assert peeker.closed
    assert not [w for w in caught if "still open" in str(w.message)]
