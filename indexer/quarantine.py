"""The quarantine: source rows that could not become a document, kept for an operator.

A row the indexer cannot turn into a document (a JSON column nested too deep, a value the
source refuses to read, a document Elasticsearch refuses for good or that is too large for
any bulk request) must not stop the capture loop, whose batch would otherwise fail for every
tenant on every restart. The rebuild and the search sink hand such rows back
(``indexer.rebuild.PoisonRow``); the loop records them in ``loyalty_indexer.quarantine`` in
the source database (table, row id, project, LSN of the change, reason) before the slot
moves on, writes everything else of the batch, and advances. Nothing is written for a
quarantined row: both sinks keep the version they had (none for a new row).

- One log line (``row quarantined``) and one count (``indexer_quarantined_rows_total``) per
  change that fails, not per attempt: recording a row again at the same LSN with the same
  reason (a batch applied again after an outage) is a no-op.
- A row written later (a change fixed it) leaves the quarantine by itself; the loop keeps the
  quarantined keys in memory, so this costs a statement only when it happens.
- ``indexer quarantine list [--json]`` shows the rows; ``indexer quarantine retry ID ...``
  (or ``--all``) reads them from the source again and writes those that now build to both
  sinks, at the slot's confirmed position (or the row's LSN if later): every change still to
  come is newer, so it wins as usual. Rows that still fail stay, with the new reason.

Every statement names the table in its own schema (``indexer/sql/quarantine.sql``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg

from cache.types import Lsn
from indexer import metrics
from indexer.changes import TouchedObjects
from indexer.errors import SourceBug, postgres_boundary
from indexer.queries import query
from indexer.rebuild import TABLE_OF_KIND, PoisonRow, Rebuilder, SinkWrites, kind_of_table, poison
from indexer.settings import ENVIRONMENT_HELP, IndexerSettings
from indexer.sinks.elastic import RefusedDocument, VersionedDelete
from indexer.slot import slot_status
from indexer.source import DocumentSource, connect

log = logging.getLogger(__name__)

AnyConnection = psycopg.AsyncConnection[Any]
RowKey = tuple[str, str]  # (table, row id)


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    id: int
    table: str
    row_id: str
    project_id: str | None
    lsn: str
    reason: str
    attempts: int
    first_seen_at: datetime
    last_seen_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "table": self.table,
            "row_id": self.row_id,
            "project_id": self.project_id,
            "lsn": self.lsn,
            "reason": self.reason,
            "attempts": self.attempts,
            "first_seen_at": self.first_seen_at.isoformat(),
            "last_seen_at": self.last_seen_at.isoformat(),
        }


def refused_row(refused: RefusedDocument) -> PoisonRow:
    """A document Elasticsearch refused for good, as a row to quarantine."""
    return poison(
        refused.kind, refused.object_id, refused.project_id, refused.version, refused.reason
    )


class QuarantineStore:
    """The statements on ``loyalty_indexer.quarantine``, on one connection of the source."""

    def __init__(self, conn: AnyConnection) -> None:
        self._conn = conn

    @postgres_boundary
    async def ensure_ready(self) -> None:
        cursor = await self._conn.execute(query("quarantine_exists"))
        row = await cursor.fetchone()
        if not (row and row[0]):
            raise SourceBug(
                "table loyalty_indexer.quarantine does not exist or this role may not use "
                "schema loyalty_indexer: run `indexer migrate`"
            )

    @postgres_boundary
    async def record(self, rows: Sequence[PoisonRow]) -> list[PoisonRow]:
        """Record rows (the newest LSN wins); returns those that were news."""
        latest: dict[RowKey, PoisonRow] = {}
        for row in rows:
            key = (row.table, row.object_id)
            if key not in latest or latest[key].version <= row.version:
                latest[key] = row
        batch = list(latest.values())
        cursor = await self._conn.execute(
            query("quarantine_record"),
            {
                "tables": [row.table for row in batch],
                "ids": [row.object_id for row in batch],
                "projects": [row.project_id for row in batch],
                "lsns": [str(Lsn(row.version)) for row in batch],
                "reasons": [row.reason for row in batch],
            },
        )
        recorded = {(str(table), str(row_id)) for table, row_id in await cursor.fetchall()}
        return [row for row in batch if (row.table, row.object_id) in recorded]

    @postgres_boundary
    async def resolve(self, written: Sequence[tuple[str, str, int]]) -> set[RowKey]:
        """Remove the entries of rows written at a version (table, id, version), except
        those quarantined again at a newer LSN; returns the keys removed."""
        if not written:
            return set()
        cursor = await self._conn.execute(
            query("quarantine_resolve"),
            {
                "tables": [table for table, _, _ in written],
                "ids": [row_id for _, row_id, _ in written],
                "lsns": [str(Lsn(version)) for _, _, version in written],
            },
        )
        return {(str(table), str(row_id)) for table, row_id in await cursor.fetchall()}

    @postgres_boundary
    async def failed_again(self, row: PoisonRow) -> None:
        await self._conn.execute(
            query("quarantine_failed_again"),
            {"table": row.table, "row_id": row.object_id, "reason": row.reason},
        )

    @postgres_boundary
    async def keys(self) -> set[RowKey]:
        cursor = await self._conn.execute(query("quarantine_keys"))
        return {(str(table), str(row_id)) for table, row_id in await cursor.fetchall()}

    @postgres_boundary
    async def count(self) -> int:
        cursor = await self._conn.execute(query("quarantine_count"))
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    @postgres_boundary
    async def entries(self, ids: Sequence[int] | None = None) -> list[QuarantineEntry]:
        """Every entry in id order, or those with these ids."""
        if ids is None:
            cursor = await self._conn.execute(query("quarantine_entries"))
        else:
            cursor = await self._conn.execute(
                query("quarantine_entries_by_ids"), {"ids": list(ids)}
            )
        return [
            QuarantineEntry(
                id=int(row[0]),
                table=str(row[1]),
                row_id=str(row[2]),
                project_id=None if row[3] is None else str(row[3]),
                lsn=str(row[4]),
                reason=str(row[5]),
                attempts=int(row[6]),
                first_seen_at=row[7],
                last_seen_at=row[8],
            )
            for row in await cursor.fetchall()
        ]


def _written(chunk: SinkWrites, bad: set[RowKey]) -> list[tuple[str, str, int]]:
    """(table, id, version) of the chunk's documents and removals both sinks applied."""
    out = [
        (TABLE_OF_KIND[document.kind], document.object_id, version)
        for document, version in chunk.documents
    ]
    out.extend((TABLE_OF_KIND[r.kind], r.object_id, r.version) for r in chunk.removed)
    return [item for item in out if (item[0], item[1]) not in bad]


class Quarantine:
    """The writer's side (capture loop, initial load): after each chunk both sinks applied,
    record its poison rows and clear the entries of rows it wrote."""

    def __init__(self) -> None:
        self._keys: set[RowKey] | None = None

    async def load(self, conn: AnyConnection) -> None:
        """Check the table is there and read the quarantined keys (once per process)."""
        store = QuarantineStore(conn)
        await store.ensure_ready()
        self._keys = await store.keys()
        metrics.QUARANTINE_ROWS.set(len(self._keys))

    async def settle(
        self, conn: AnyConnection, chunk: SinkWrites, refused: Iterable[RefusedDocument] = ()
    ) -> None:
        if self._keys is None:
            await self.load(conn)
        keys = self._keys if self._keys is not None else set()
        poisoned = [*chunk.quarantined, *(refused_row(r) for r in refused)]
        bad = {(row.table, row.object_id) for row in poisoned}
        store = QuarantineStore(conn)
        changed = False
        if poisoned:
            for row in await store.record(poisoned):
                log.warning(
                    "row quarantined",
                    extra={
                        "table": row.table,
                        "row_id": row.object_id,
                        "project_id": row.project_id,
                        "lsn": str(Lsn(row.version)),
                        "reason": row.reason,
                    },
                )
                metrics.QUARANTINED_ROWS.labels(row.table).inc()
            keys.update(bad)
            changed = True
        # Nothing quarantined (the usual case): no list of the chunk's writes is built.
        written = (
            [item for item in _written(chunk, bad) if (item[0], item[1]) in keys] if keys else []
        )
        if written:
            keys.difference_update(await store.resolve(written))
            changed = True
        if changed:
            metrics.QUARANTINE_ROWS.set(await store.count())


# --- indexer quarantine list | retry ------------------------------------------------------


@dataclass
class RetryReport:
    indexed: list[QuarantineEntry] = field(default_factory=list)
    still: list[tuple[QuarantineEntry, str]] = field(default_factory=list)
    gone: list[QuarantineEntry] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)


async def list_entries(settings: IndexerSettings) -> list[QuarantineEntry]:
    async with await connect(settings.pg_dsn, autocommit=True) as conn:
        store = QuarantineStore(conn)
        await store.ensure_ready()
        return await store.entries()


async def retry_entries(settings: IndexerSettings, ids: Sequence[int] | None) -> RetryReport:
    """Rebuild the quarantined rows (``ids``, or all) from the source and write those that
    build to both sinks; see the module docstring for the version they are written at."""
    from indexer.commands import open_clients  # the commands module imports the loop

    report = RetryReport()
    async with await connect(settings.pg_dsn, autocommit=True) as conn:
        store = QuarantineStore(conn)
        await store.ensure_ready()
        entries = await store.entries(ids)
        report.missing = sorted(set(ids or ()) - {entry.id for entry in entries})
        if not entries:
            return report
        confirmed = int((await slot_status(conn, settings.slot_name)).confirmed_flush_lsn)
        touched = TouchedObjects()
        by_key: dict[RowKey, QuarantineEntry] = {}
        for entry in entries:
            kind = kind_of_table(entry.table)
            if kind is None:
                report.still.append((entry, f"not a table of documents: {entry.table}"))
                continue
            version = max(confirmed, int(Lsn.parse(entry.lsn)))
            touched.mark(kind, entry.row_id, entry.project_id, version)
            by_key[(entry.table, entry.row_id)] = entry
        async with open_clients(settings) as clients:
            rebuilder = Rebuilder(
                DocumentSource(conn),
                chunk_ids=settings.rebuild_chunk_ids,
                indexed_owners=clients.search.indexed_owners,
            )
            async for chunk in rebuilder.writes(touched):
                deletes = [VersionedDelete(r.kind, r.object_id, r.version) for r in chunk.removed]
                result, _ = await asyncio.gather(
                    clients.search.apply(chunk.documents, deletes), clients.cache.apply(chunk)
                )
                poisoned = [*chunk.quarantined, *(refused_row(r) for r in result.refused)]
                bad = {(row.table, row.object_id) for row in poisoned}
                for row in poisoned:
                    await store.failed_again(row)
                    if (row.table, row.object_id) in by_key:
                        report.still.append((by_key[(row.table, row.object_id)], row.reason))
                written = _written(chunk, bad)
                await store.resolve(written)
                documents = {(TABLE_OF_KIND[d.kind], d.object_id) for d, _ in chunk.documents}
                for table, row_id, _ in written:
                    if (table, row_id) not in by_key:
                        continue
                    entry = by_key.pop((table, row_id))
                    done = report.indexed if (table, row_id) in documents else report.gone
                    done.append(entry)
        # Rows the source no longer has and whose project was never known: nothing to write.
        still = {(entry.table, entry.row_id) for entry, _ in report.still}
        leftovers = [entry for key, entry in by_key.items() if key not in still]
        await store.resolve(
            [(e.table, e.row_id, max(confirmed, int(Lsn.parse(e.lsn)))) for e in leftovers]
        )
        report.gone.extend(leftovers)
    return report


def _print_entries(entries: Sequence[QuarantineEntry]) -> None:
    if not entries:
        print("the quarantine is empty")
        return
    header = ("id", "table", "row id", "project", "lsn", "attempts", "last seen", "reason")
    rows = [
        (
            str(e.id),
            e.table,
            e.row_id,
            e.project_id or "-",
            e.lsn,
            str(e.attempts),
            e.last_seen_at.isoformat(timespec="seconds"),
            e.reason,
        )
        for e in entries
    ]
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(7)]
    for row in (header, *rows):
        cells = (cell.ljust(width) for cell, width in zip(row[:7], widths, strict=True))
        print("  ".join(cells) + "  " + row[7])


def _list(args: argparse.Namespace, settings: IndexerSettings) -> int:
    entries = asyncio.run(list_entries(settings))
    if args.json:
        print(orjson.dumps([entry.as_json() for entry in entries]).decode())
    else:
        _print_entries(entries)
    return 0


def _retry(args: argparse.Namespace, settings: IndexerSettings) -> int:
    if bool(args.ids) == bool(args.all):
        print("indexer quarantine retry: give row ids or --all (not both)", file=sys.stderr)
        return 2
    report = asyncio.run(retry_entries(settings, None if args.all else args.ids))
    for entry in report.indexed:
        print(f"indexed {entry.table} {entry.row_id} (id {entry.id})")
    for entry in report.gone:
        print(f"gone {entry.table} {entry.row_id} (id {entry.id}): not in the source any more")
    for entry, reason in report.still:
        print(f"still quarantined {entry.table} {entry.row_id} (id {entry.id}): {reason}")
    total = len(report.indexed) + len(report.gone) + len(report.still)
    print(
        f"retried {total}: indexed {len(report.indexed)}, gone {len(report.gone)}, "
        f"still quarantined {len(report.still)}"
    )
    for missing in report.missing:
        print(f"indexer quarantine retry: no quarantined row with id {missing}", file=sys.stderr)
    return 1 if report.missing else 0


def add_command(subparsers: Any) -> None:
    """Register ``indexer quarantine list | retry`` on the ``indexer`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "quarantine",
        help="list and retry source rows that could not be indexed",
        description="Rows that could not become a document (loyalty_indexer.quarantine).",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="show the quarantined rows")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_list)
    retry = actions.add_parser(
        "retry",
        help="read quarantined rows again and index those that now build",
        description="Read the rows from the source again; those that now build are written "
        "to Elasticsearch and Redis and leave the quarantine, the others stay.",
    )
    retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="quarantine row ids")
    retry.add_argument("--all", action="store_true", help="every quarantined row")
    retry.set_defaults(handler=_retry)
