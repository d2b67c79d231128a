"""Logical replication slot operations over psycopg 3 (async), SQL from ``sql/slot.sql``.

psycopg has no streaming replication protocol, so changes are read by polling
``pg_logical_slot_peek_binary_changes`` and the slot is moved with
``pg_replication_slot_advance`` once a batch is applied everywhere. Driver errors leave
this module as ``SourceUnavailable`` (connection failures and other ``OperationalError``:
retry later) or ``SlotError`` (anything else).

Facts checked on PostgreSQL 15 that shape these functions:

- ``pg_replication_slot_advance`` is not transactional: the slot moves in shared memory at
  the call and a ROLLBACK does not move it back. It may run inside a transaction block,
  but it belongs on an autocommit connection, which holds no snapshot while idle.
- The advanced position is only marked dirty and written to disk at the next checkpoint
  (PG 15 docs: "in the event of a crash, the slot may return to an earlier position"):
  delivery is at-least-once and consumers must be idempotent.
- A logical slot refuses to move backwards (an error, not a no-op) and never moves past
  the WAL flush position; ``advance_slot`` clamps so that an older target is a no-op.
- A decoding session skips every transaction whose commit record starts before the
  confirmed position: confirm a transaction's ``end_lsn``; confirming its ``commit_lsn``
  delivers it again.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import psycopg
from psycopg import pq, sql

from cache.types import Lsn
from indexer.errors import SlotError, SourceUnavailable, classify_postgres
from indexer.queries import query
from indexer.source import server_cursor

# Slot names are limited to these by Postgres; publication names are held to the same rule
# because the publication_names option downcases unquoted names.
_NAME = re.compile(r"[a-z0-9_]{1,63}")

ChangeRow = tuple[Lsn, int, bytes]  # (lsn, xid, pgoutput message) as the peek returns it


@dataclass(frozen=True, slots=True)
class SlotStatus:
    slot_name: str
    active: bool  # a session is using the slot right now
    confirmed_flush_lsn: Lsn
    restart_lsn: Lsn | None  # None once the slot has lost its WAL (wal_status 'lost')
    wal_lsn: Lsn  # pg_current_wal_lsn() when the status was read
    wal_status: str | None  # reserved, extended, unreserved or lost
    retained_wal_bytes: int  # WAL kept for this slot: wal_lsn - restart_lsn
    lag_bytes: int  # WAL not yet confirmed: wal_lsn - confirmed_flush_lsn


class _Wrapped:
    """Turns driver errors raised inside the block into the indexer's exceptions."""

    __slots__ = ("_action",)

    def __init__(self, action: str) -> None:
        self._action = action

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: TracebackType | None
    ) -> None:
        if error is None:
            return
        translated = classify_postgres(error)
        if isinstance(translated, SourceUnavailable):
            raise SourceUnavailable(f"{self._action}: {error}") from error
        if translated is not None:
            # Any other refusal of a slot or publication call is the slot's own error.
            raise SlotError(f"{self._action}: {error}") from error


def _checked(name: str, what: str) -> str:
    if _NAME.fullmatch(name) is None:
        raise SlotError(f"invalid {what} name {name!r}: use 1 to 63 of [a-z0-9_]")
    return name


def _qualified(table: str) -> tuple[str, str]:
    schema, _, name = table.rpartition(".")
    return (schema or "public", name)


def _table_list(tables: Iterable[tuple[str, str]]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(schema, name) for schema, name in tables)


async def _fetch_one(
    conn: psycopg.AsyncConnection[Any], statement: str, params: dict[str, Any]
) -> tuple[Any, ...] | None:
    cursor = await conn.execute(statement, params)
    return await cursor.fetchone()


async def ensure_publication(
    conn: psycopg.AsyncConnection[Any], name: str, tables: Iterable[str]
) -> list[str]:
    """Create the publication if absent, add the tables it lacks; returns those added.

    Table names are ``table`` (schema ``public``) or ``schema.table``. Tables already in
    the publication and not listed are left alone. A complete publication is only read, so
    a role that does not own the tables (the indexer's) may call this once ``indexer setup``,
    run as their owner, made it; otherwise the ``SlotError`` says to run that.
    """
    publication = sql.Identifier(_checked(name, "publication"))
    wanted = list(dict.fromkeys(_qualified(table) for table in tables))
    try:
        return await _ensure_publication(conn, name, publication, wanted)
    except SlotError as error:
        if not isinstance(error.__cause__, psycopg.errors.InsufficientPrivilege):
            raise
        raise SlotError(
            f"publication {name!r} is missing or lacks tables and this role may not change it: "
            f"run `indexer setup` as the tables' owner ({error.__cause__})"
        ) from error.__cause__


async def _ensure_publication(
    conn: psycopg.AsyncConnection[Any], name: str, publication: sql.Identifier,
    wanted: list[tuple[str, str]],
) -> list[str]:
    with _Wrapped(f"ensure publication {name!r}"):
        async with conn.transaction():
            row = await _fetch_one(conn, query("publication_exists"), {"publication": name})
            if not (row and row[0]):
                statement = sql.SQL(query("create_publication"))
                await conn.execute(
                    statement.format(publication=publication, tables=_table_list(wanted))
                )
                missing = wanted
            else:
                cursor = await conn.execute(query("publication_tables"), {"publication": name})
                present = {(schema, table) for schema, table in await cursor.fetchall()}
                missing = [table for table in wanted if table not in present]
                if missing:
                    statement = sql.SQL(query("publication_add_tables"))
                    await conn.execute(
                        statement.format(publication=publication, tables=_table_list(missing))
                    )
    return [f"{schema}.{table}" for schema, table in missing]


async def drop_publication(conn: psycopg.AsyncConnection[Any], name: str) -> None:
    publication = sql.Identifier(_checked(name, "publication"))
    with _Wrapped(f"drop publication {name!r}"):
        await conn.execute(sql.SQL(query("drop_publication")).format(publication=publication))


async def slot_exists(conn: psycopg.AsyncConnection[Any], slot_name: str) -> bool:
    with _Wrapped(f"look up slot {slot_name!r}"):
        row = await _fetch_one(conn, query("slot_exists"), {"slot": slot_name})
    return bool(row and row[0])


@asynccontextmanager
async def create_slot_with_snapshot(
    dsn: str, slot_name: str, *, temporary: bool = False
) -> AsyncIterator[tuple[Lsn, str]]:
    """Create a pgoutput slot exporting a snapshot; yields ``(consistent_point, snapshot)``.

    The snapshot shows the database exactly as of the consistent point, and the slot streams
    every transaction committed after it: reading through the snapshot and then from the
    slot leaves no gap and no overlap. The snapshot stays importable only while this
    replication connection stays open and idle, so it is held until the block exits; the
    slot itself remains (``temporary``: it goes with the connection, and only the snapshot
    is wanted). Creating a slot waits for transactions already running to end.
    """
    action = f"create slot {_checked(slot_name, 'slot')!r}"
    with _Wrapped(action):
        conn = await psycopg.AsyncConnection.connect(dsn, replication="database", autocommit=True)
    try:
        # Without bind parameters psycopg sends the simple query protocol, the only one a
        # replication connection accepts.
        name = "create_temporary_slot_exporting_snapshot" if temporary else (
            "create_slot_exporting_snapshot"
        )
        command = sql.SQL(query(name))
        with _Wrapped(action):
            cursor = await conn.execute(command.format(slot=sql.Identifier(slot_name)))
            row = await cursor.fetchone()
        if row is None:
            raise SlotError(f"{action}: the server returned no slot")
        yield Lsn.parse(str(row[1])), str(row[2])
    finally:
        await conn.close()


async def open_snapshot_reader(conn: psycopg.AsyncConnection[Any], snapshot_name: str) -> None:
    """Begin a repeatable-read, read-only transaction on ``conn`` that sees that snapshot.

    ``conn`` must be idle (not in a transaction): SET TRANSACTION SNAPSHOT has to come
    before any query of its transaction. The caller ends the transaction (a rollback).
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise SlotError("a snapshot reader must start from an idle connection")
    begin = "snapshot_reader_begin" if conn.autocommit else "snapshot_reader_isolation"
    use_snapshot = sql.SQL(query("snapshot_reader_import"))
    with _Wrapped(f"import snapshot {snapshot_name!r}"):
        await conn.execute(query(begin))
        await conn.execute(use_snapshot.format(snapshot=sql.Literal(snapshot_name)))


async def peek_changes(
    conn: psycopg.AsyncConnection[Any],
    slot_name: str,
    publication: str,
    upto_nchanges: int,
    upto_lsn: Lsn | None = None,
) -> list[ChangeRow]:
    """pgoutput v1 messages from the slot's confirmed position on, without consuming them.

    ``upto_nchanges`` bounds the batch: Postgres checks it only after each decoded commit,
    so a batch holds whole transactions and may exceed it (by up to one transaction).
    ``upto_lsn`` stops after the transaction whose commit crosses that position. Each row
    is ``(lsn, xid, message)``; a commit's row carries the transaction's end LSN.
    """
    params = {
        "slot": slot_name,
        "publication": _checked(publication, "publication"),
        "upto_nchanges": upto_nchanges,
        "upto_lsn": None if upto_lsn is None else str(upto_lsn),
    }
    with _Wrapped(f"peek slot {slot_name!r}"):
        cursor = await conn.execute(query("peek_changes"), params)
        rows = await cursor.fetchall()
    parse = Lsn.parse
    return [(parse(lsn), xid, data) for lsn, xid, data in rows]


@asynccontextmanager
async def peek_change_pages(
    conn: psycopg.AsyncConnection[Any],
    slot_name: str,
    publication: str,
    upto_nchanges: int,
    upto_lsn: Lsn,
    page_rows: int,
) -> AsyncIterator[AsyncIterator[list[ChangeRow]]]:
    """:func:`peek_changes`, read ``page_rows`` rows at a time through a server-side cursor.

    A batch holds whole transactions, so one transaction of a million rows is a million rows:
    the server keeps the peek's result in a tuplestore (spilled to disk past ``work_mem``)
    and this process holds one page of it. The cursor lives in a transaction on ``conn``,
    which must be idle and used for nothing else until the block exits.
    """
    params = {
        "slot": slot_name,
        "publication": _checked(publication, "publication"),
        "upto_nchanges": upto_nchanges,
        "upto_lsn": str(upto_lsn),
    }
    action = f"peek slot {slot_name!r}"
    parse = Lsn.parse
    # The way out talks to the server too (CLOSE, COMMIT): a source gone mid-batch fails
    # there as well, and must reach the caller as an outage like any other peek error.
    with _Wrapped(action):
        async with conn.transaction(), server_cursor(conn, "peek_changes") as cursor:
            with _Wrapped(action):
                await cursor.execute(query("peek_changes"), params)

            async def pages() -> AsyncIterator[list[ChangeRow]]:
                while True:
                    with _Wrapped(action):
                        rows = await cursor.fetchmany(page_rows)
                    if not rows:
                        return
                    yield [(parse(lsn), xid, data) for lsn, xid, data in rows]

            yield pages()




async def advance_slot(conn: psycopg.AsyncConnection[Any], slot_name: str, lsn: Lsn) -> Lsn:
    """Confirm everything before ``lsn``; returns the slot's confirmed position after.

    A target at or before the confirmed position changes nothing; one past the WAL flush
    position stops there. The move is immediate and not undone by a rollback, but reaches
    disk only at the next checkpoint (see the module notes).
    """
    with _Wrapped(f"advance slot {slot_name!r} to {lsn}"):
        row = await _fetch_one(conn, query("advance_slot"), {"slot": slot_name, "lsn": str(lsn)})
    if row is None:
        raise SlotError(f"advance slot {slot_name!r}: no result")
    return Lsn.parse(row[0])


async def current_wal_lsn(conn: psycopg.AsyncConnection[Any]) -> Lsn:
    """The WAL flush position: the newest point every decoding call can read up to.

    Use it as the ``upto_lsn`` of a peek and, when that peek comes back short, as the
    heartbeat target of ``advance_slot``. Not ``pg_current_wal_lsn()``: that is the write
    position, which can run ahead of the flush (with ``synchronous_commit = off``, as on the
    dev server, and whenever backends write out full WAL buffers). A peek reads only up to
    the flush, so advancing to a write position could confirm a commit it never returned.
    Every record that starts before the flush position is returned whole by the peek, so
    this target is safe even when it falls inside a record.
    """
    with _Wrapped("read the WAL position"):
        row = await _fetch_one(conn, query("current_wal_lsn"), {})
    if row is None:
        raise SlotError("read the WAL position: no result")
    return Lsn.parse(row[0])


async def slot_status(conn: psycopg.AsyncConnection[Any], slot_name: str) -> SlotStatus:
    with _Wrapped(f"read status of slot {slot_name!r}"):
        row = await _fetch_one(conn, query("slot_status"), {"slot": slot_name})
    if row is None:
        raise SlotError(f"slot {slot_name!r} does not exist")
    active, confirmed_text, restart_text, wal_text, wal_status = row
    if confirmed_text is None:
        raise SlotError(f"slot {slot_name!r} is not a logical slot")
    confirmed = Lsn.parse(confirmed_text)
    restart = None if restart_text is None else Lsn.parse(restart_text)
    wal = Lsn.parse(wal_text)
    return SlotStatus(
        slot_name=slot_name,
        active=bool(active),
        confirmed_flush_lsn=confirmed,
        restart_lsn=restart,
        wal_lsn=wal,
        wal_status=wal_status,
        retained_wal_bytes=0 if restart is None else max(0, wal - restart),
        lag_bytes=max(0, wal - confirmed),
    )


async def slot_lost(conn: psycopg.AsyncConnection[Any], slot_name: str) -> str | None:
    """Why the slot cannot give changes any more (``"dropped"``: it does not exist;
    ``"invalidated"``: its WAL is gone, ``wal_status = lost``), or ``None`` when it can."""
    with _Wrapped(f"read status of slot {slot_name!r}"):
        row = await _fetch_one(conn, query("slot_status"), {"slot": slot_name})
    if row is None:
        return "dropped"
    return "invalidated" if row[4] == "lost" else None


async def drop_slot(conn: psycopg.AsyncConnection[Any], slot_name: str) -> bool:
    """Drop the slot if it exists; returns whether it did. A slot in use is not dropped."""
    with _Wrapped(f"drop slot {slot_name!r}"):
        cursor = await conn.execute(query("drop_slot"), {"slot": slot_name})
        rows = await cursor.fetchall()
    return bool(rows)
