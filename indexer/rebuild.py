"""Turn the objects a batch touched into the writes both sinks apply, in bounded chunks.

Fan-out is resolved against the source (a renamed campaign's vouchers, the member rows of a
segment that became static), then each touched object is rebuilt from the source; an object
the source no longer has becomes a versioned removal. A rebuilt customer's segment
membership (static rows and the auto-update filters of its project, evaluated on its new
document) also goes to Redis as a versioned membership record, which emits the customer's
segment entered/left events (``cache.membership``). A segment whose filter, type or project
changed is not fanned out here: it becomes a recompute job, run against the customer
documents already indexed (``indexer.recompute``).

A row no document can carry never stops the rebuild: a read the source refuses is retried on
halves of the chunk down to the one row that fails, a row the builders refuse (a JSON column
nested too deep) is skipped, and both become :class:`PoisonRow` items of the chunk, which the
caller records in the quarantine (``indexer.quarantine``) while the rest is written.

An object that changed project (``update ... set project_id``) leaves its old project: its
object and alias keys there get versioned tombstones. The old project is known from the
change's old row (REPLICA IDENTITY FULL) or, failing that, from the indexed document (one
realtime multi-get per chunk, ``IndexedOwners``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from cache.errors import StoreError
from cache.readmodel.documents import ALIAS_OF_KIND
from cache.readmodel.indices import Field
from cache.records import MembershipMode, MembershipUpdate, SegmentJob
from cache.types import ObjectKind
from indexer import metrics
from indexer.changes import Mark, TouchedObjects
from indexer.documents import (
    Document,
    UnindexableRow,
    campaign_document,
    customer_document,
    segment_document,
    voucher_document,
)
from indexer.errors import SourceBug
from indexer.jsonvalues import TooDeepJson
from indexer.segment_filter import InvalidSegmentFilter, SegmentFilter, compile_filter
from indexer.source import DocumentSource, Row

log = logging.getLogger(__name__)

ExistingIds = Callable[[ObjectKind], AsyncIterator[tuple[str, str]]]
# Longest reason kept for a quarantined row: a driver message may quote a whole value.
MAX_REASON = 1000


class IndexedOwner(Protocol):
    """What the index holds of an object: ``indexer.sinks.elastic.IndexedOwner``."""

    @property
    def project_id(self) -> str: ...
    @property
    def alias(self) -> str | None: ...
    @property
    def version(self) -> int: ...


IndexedOwners = Callable[
    [Sequence[tuple[ObjectKind, str]]], Awaitable[Mapping[tuple[ObjectKind, str], IndexedOwner]]
]

_BUILDERS = {
    ObjectKind.VOUCHER: voucher_document,
    ObjectKind.CAMPAIGN: campaign_document,
    ObjectKind.SEGMENT: segment_document,
}
_KIND_OF_TABLE = {
    "vouchers": ObjectKind.VOUCHER,
    "customers": ObjectKind.CUSTOMER,
    "campaigns": ObjectKind.CAMPAIGN,
    "segments": ObjectKind.SEGMENT,
}
TABLE_OF_KIND = {kind: table for table, kind in _KIND_OF_TABLE.items()}


def kind_of_table(table: str) -> ObjectKind | None:
    """The kind of object a source table's rows are (None: not a table of documents)."""
    return _KIND_OF_TABLE.get(table)


@dataclass(frozen=True, slots=True)
class RemovedObject:
    kind: ObjectKind
    project_id: str
    object_id: str
    version: int


@dataclass(frozen=True, slots=True)
class PoisonRow:
    """A source row that could not become a document, at the version of its change."""

    kind: ObjectKind
    object_id: str
    project_id: str | None
    version: int
    reason: str

    @property
    def table(self) -> str:
        return TABLE_OF_KIND[self.kind]


def poison(
    kind: ObjectKind, object_id: str, project_id: str | None, version: int, reason: str
) -> PoisonRow:
    """A :class:`PoisonRow` with its reason on one bounded line."""
    line = " ".join(reason.split())
    if len(line) > MAX_REASON:
        line = line[: MAX_REASON - 3] + "..."
    return PoisonRow(kind, object_id, project_id, version, line)


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    app_id: str
    project_id: str
    token_sha256: str
    rate_limit_per_minute: int | None
    revoked: bool


@dataclass(slots=True)
class SinkWrites:
    """One chunk of writes; every item carries its version (a commit LSN)."""

    documents: list[tuple[Document, int]] = field(default_factory=list)
    removed: list[RemovedObject] = field(default_factory=list)
    removed_codes: list[tuple[str, str, int]] = field(default_factory=list)
    removed_source_ids: list[tuple[str, str, int]] = field(default_factory=list)
    api_keys: list[tuple[ApiKeyRow, int]] = field(default_factory=list)
    removed_api_keys: list[tuple[str, str, int]] = field(default_factory=list)
    # Objects written under another project now: their old project's object key gets a
    # tombstone (Redis only; the search document is overwritten by the new one).
    moved: list[RemovedObject] = field(default_factory=list)
    # Rows no document could be built for: recorded in the quarantine, written nowhere.
    quarantined: list[PoisonRow] = field(default_factory=list)
    # Customers' segment membership (Redis records, counters and events).
    memberships: list[MembershipUpdate] = field(default_factory=list)
    # Segments whose membership the recompute must bring up to date (Redis, durable with
    # the batch: written before the slot moves past the segment's change).
    segment_jobs: list[SegmentJob] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.documents)
            + len(self.removed)
            + len(self.removed_codes)
            + len(self.removed_source_ids)
            + len(self.api_keys)
            + len(self.removed_api_keys)
            + len(self.moved)
            + len(self.quarantined)
            + len(self.memberships)
            + len(self.segment_jobs)
        )

    def remove_alias(self, kind: ObjectKind, project_id: str, value: str, version: int) -> None:
        """Tombstone an object's alias (code, source_id) in a project at ``version``."""
        if kind is ObjectKind.VOUCHER:
            self.removed_codes.append((project_id, value, version))
        elif kind is ObjectKind.CUSTOMER:
            self.removed_source_ids.append((project_id, value, version))


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@functools.lru_cache(maxsize=4096)
def compiled_filter(segment_id: str, filter_json: bytes) -> SegmentFilter | str:
    """A segment's compiled filter, or the reason it is invalid.

    Cached across batches by the filter's text: every batch that rebuilds a customer needs
    its project's filters, and an invalid one is reported once, not on every batch.
    """
    try:
        return compile_filter(orjson.loads(filter_json))
    except InvalidSegmentFilter as error:
        return _invalid(segment_id, str(error))


@functools.lru_cache(maxsize=1024)
def _too_deep(segment_id: str, digest: bytes, reason: str) -> str:
    """A filter nested too deep to parse: reported once per segment and filter text."""
    del digest  # part of the cache key only
    return _invalid(segment_id, reason)


def _invalid(segment_id: str, reason: str) -> str:
    log.warning("segment filter invalid", extra={"segment_id": segment_id, "reason": reason})
    metrics.INVALID_FILTERS.inc()
    return reason


class SegmentFilters:
    """Compiled auto-update filters per project, loaded on demand for one batch."""

    def __init__(self, source: DocumentSource) -> None:
        self._source = source
        self._by_project: dict[str, list[tuple[str, SegmentFilter]]] = {}

    async def load(self, project_ids: Iterable[str]) -> None:
        missing = sorted({p for p in project_ids if p not in self._by_project})
        if not missing:
            return
        for project_id in missing:
            self._by_project[project_id] = []
        for row in await self._source.auto_segments(missing):
            value = row["filter"]
            if isinstance(value, TooDeepJson):
                compiled: SegmentFilter | str = _too_deep(
                    row["id"], hashlib.blake2b(value.text).digest(), value.reason("filter")
                )
            else:
                compiled = compiled_filter(
                    row["id"], orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
                )
            if isinstance(compiled, str):
                continue  # a malformed filter leaves its segment empty; reported once
            self._by_project[row["project_id"]].append((row["id"], compiled))

    def of(self, project_id: str) -> list[tuple[str, SegmentFilter]]:
        return self._by_project.get(project_id, [])


class Rebuilder:
    """Rebuilds touched objects from a :class:`DocumentSource` into :class:`SinkWrites`."""

    def __init__(
        self,
        source: DocumentSource,
        *,
        chunk_ids: int = 2000,
        indexed_owners: IndexedOwners | None = None,
        emit_events: bool = True,
        clock: Callable[[], int] | None = None,
    ) -> None:
        """``indexed_owners`` reads the project the index holds for documents (a live
        indexer's moves); without it, moves are seen from the changes' old rows only.
        ``emit_events`` False: membership records and counters are written without events
        (a load or a cache reload rebuilds state; no customer entered anything then)."""
        self._source = source
        self._chunk_ids = chunk_ids
        self._indexed_owners = indexed_owners
        self._emit_events = emit_events
        # Epoch microseconds now: relative-date filters are evaluated at it.
        self._clock = clock if clock is not None else _wall_clock_us
        self._existing_ids: ExistingIds | None = None

    async def expand(self, touched: TouchedObjects, existing_ids: ExistingIds | None) -> None:
        """Resolve fan-out that needs the source, marking the objects it reaches. The fan-out
        that may reach millions (a renamed campaign's vouchers, everything after a truncate)
        is not marked: :meth:`writes` streams it a chunk at a time, reading the index's ids
        through ``existing_ids``."""
        self._existing_ids = existing_ids
        if touched.static_segments:
            # Rows a client left in segment_members while the segment was auto-update count
            # from now on: those customers are rebuilt; the recompute job takes the segment
            # away from every other customer.
            for row in await self._source.customer_ids_of_segments(
                sorted(touched.static_segments)
            ):
                version = touched.static_segments[row["segment_id"]]
                touched.mark(ObjectKind.CUSTOMER, row["customer_id"], None, version)

    async def _fan_out(
        self, touched: TouchedObjects
    ) -> AsyncIterator[tuple[ObjectKind, dict[str, Mark]]]:
        """Chunks of objects reached by fan-out too wide to hold: each renamed campaign's
        vouchers (found by their current campaign: a voucher that left it was touched by its
        own change), and after a truncate every row the source holds and every indexed
        object it no longer holds (removed). A truncate names no rows, and this is the one
        answer that stays right whatever the cascade touched."""
        size = self._chunk_ids
        for campaign_id, version in sorted(touched.renamed_campaigns.items()):
            async for ids in self._source.voucher_id_chunks(campaign_id, size):
                yield ObjectKind.VOUCHER, {object_id: Mark(None, version) for object_id in ids}
        if not touched.truncated_tables:
            return
        version = max(touched.truncated_tables.values())
        for table, kind in _KIND_OF_TABLE.items():
            async for ids in self._source.primary_key_chunks(
                self._source.primary_keys_query(kind), size
            ):
                yield kind, {object_id: Mark(None, version) for object_id in ids}
            if self._existing_ids is None:
                continue
            page: list[tuple[str, str]] = []
            async for indexed in self._existing_ids(kind):
                page.append(indexed)
                if len(page) == size:
                    yield kind, await self._gone(table, page, version)
                    page = []
            if page:
                yield kind, await self._gone(table, page, version)

    async def _gone(
        self, table: str, indexed: list[tuple[str, str]], version: int
    ) -> dict[str, Mark]:
        """Of these indexed ``(id, project)``, those the source no longer holds."""
        held = await self._source.owners(table, [object_id for object_id, _ in indexed])
        return {
            object_id: Mark(project_id, version)
            for object_id, project_id in indexed
            if object_id not in held
        }

    async def writes(self, touched: TouchedObjects) -> AsyncIterator[SinkWrites]:
        """Chunks of writes covering every touched object, aliases and API key."""
        now_us = self._clock()
        first = SinkWrites(
            removed_codes=[(p, c, v) for (p, c), v in touched.removed_codes.items()],
            removed_source_ids=[(p, s, v) for (p, s), v in touched.removed_source_ids.items()],
            segment_jobs=[
                SegmentJob(project_id, segment_id, version, _occurred(touched, version, now_us))
                for (project_id, segment_id), version in sorted(touched.resegmented.items())
            ],
        )
        if touched.api_keys:
            await self._api_keys(touched.api_keys, first)
        by_kind: dict[ObjectKind, list[tuple[str, Mark]]] = defaultdict(list)
        for (kind, object_id), mark in touched.objects.items():
            by_kind[kind].append((object_id, mark))
        filters = SegmentFilters(self._source)
        # One chunk gathers objects of every kind up to ``chunk_ids``: a small batch then
        # costs one bulk request and one Redis pipeline, not one of each per kind.
        out = first
        for kind in (
            ObjectKind.CAMPAIGN,
            ObjectKind.SEGMENT,
            ObjectKind.VOUCHER,
            ObjectKind.CUSTOMER,
        ):
            marks = by_kind.get(kind, [])
            for chunk in _chunks(marks, self._chunk_ids):
                await self._rebuild_chunk(kind, dict(chunk), out, filters, touched, now_us)
                if len(out) >= self._chunk_ids:
                    await self._leave_old_projects(out)
                    self._leave_segments(out, touched, now_us)
                    yield out
                    out = SinkWrites()
        async for kind, wide in self._fan_out(touched):
            if wide:
                await self._rebuild_chunk(kind, wide, out, filters, touched, now_us)
            if len(out) >= self._chunk_ids:
                await self._leave_old_projects(out)
                self._leave_segments(out, touched, now_us)
                yield out
                out = SinkWrites()
        if touched.truncated_tables:
            version = max(touched.truncated_tables.values())
            async for ids in self._source.primary_key_chunks(
                "primary_keys_api_keys", self._chunk_ids
            ):
                await self._api_keys({app_id: Mark(None, version) for app_id in ids}, out)
                if len(out) >= self._chunk_ids:
                    yield out
                    out = SinkWrites()
        if len(out):
            await self._leave_old_projects(out)
            self._leave_segments(out, touched, now_us)
            yield out

    def _leave_segments(self, out: SinkWrites, touched: TouchedObjects, now_us: int) -> None:
        """A customer gone from a project (deleted, moved away, quarantined there) is a
        member of nothing in it any more."""
        for removed in (*out.removed, *out.moved):
            if removed.kind is ObjectKind.CUSTOMER:
                out.memberships.append(
                    self._membership(
                        removed.project_id, removed.object_id, removed.version, (), touched, now_us
                    )
                )

    async def _rebuild_chunk(
        self,
        kind: ObjectKind,
        marks: dict[str, Mark],
        out: SinkWrites,
        filters: SegmentFilters,
        touched: TouchedObjects,
        now_us: int,
    ) -> None:
        failed: set[str] = set()
        rows = await self._rows(kind, sorted(marks), marks, out, failed)
        found: set[str] = set()
        if kind is ObjectKind.CUSTOMER:
            await filters.load(row["project_id"] for row in rows)
        for row in rows:
            object_id = row["id"]
            found.add(object_id)
            mark = marks[object_id]
            project_id = row["project_id"]
            try:
                if kind is ObjectKind.CUSTOMER:
                    document = customer_document(row, filters.of(project_id), now_us)
                else:
                    document = _BUILDERS[kind](row)
            except StoreError:
                raise
            except Exception as error:
                # A row no document can carry: quarantined, the chunk goes on. Anything a
                # builder raises is such a row (they are pure functions of the row).
                reason = (
                    str(error)
                    if isinstance(error, UnindexableRow)
                    else (f"{type(error).__name__}: {error}")
                )
                out.quarantined.append(poison(kind, object_id, project_id, mark.version, reason))
                for old in sorted(mark.projects - {project_id}):
                    # Not written anew, yet gone from its old project: removed there.
                    out.removed.append(RemovedObject(kind, old, object_id, mark.version))
                continue
            out.documents.append((document, mark.version))
            if kind is ObjectKind.CUSTOMER:
                segment_ids = tuple(document.fields[Field.SEGMENT_IDS])
                out.memberships.append(
                    self._membership(
                        project_id, object_id, mark.version, segment_ids, touched, now_us
                    )
                )
            for old in sorted(mark.projects - {project_id}):
                out.moved.append(RemovedObject(kind, old, object_id, mark.version))
        for object_id, mark in marks.items():
            if object_id in found or object_id in failed:
                continue
            projects = set(mark.projects)
            if mark.project_id is not None:
                projects.add(mark.project_id)
            for project_id in sorted(projects):
                out.removed.append(RemovedObject(kind, project_id, object_id, mark.version))

    def _membership(
        self,
        project_id: str,
        customer_id: str,
        version: int,
        segment_ids: tuple[str, ...],
        touched: TouchedObjects,
        now_us: int,
    ) -> MembershipUpdate:
        return MembershipUpdate(
            project_id=project_id,
            customer_id=customer_id,
            version=version,
            mode=MembershipMode.REPLACE,
            segment_ids=segment_ids,
            cause_lsn=version,
            occurred_at_us=_occurred(touched, version, now_us),
            emit=self._emit_events,
        )

    async def _rows(
        self,
        kind: ObjectKind,
        ids: list[str],
        marks: Mapping[str, Mark],
        out: SinkWrites,
        failed: set[str],
    ) -> list[Row]:
        """The rows of ``ids``; a read the source refuses (a value it cannot convert) is
        tried again on each half, down to the single rows that fail, which are quarantined."""
        try:
            return await self._source.rows_by_ids(kind, ids)
        except SourceBug as error:
            if len(ids) == 1:
                mark = marks[ids[0]]
                failed.add(ids[0])
                out.quarantined.append(
                    poison(kind, ids[0], mark.project_id, mark.version, f"source: {error}")
                )
                return []
            middle = len(ids) // 2
            return [
                *await self._rows(kind, ids[:middle], marks, out, failed),
                *await self._rows(kind, ids[middle:], marks, out, failed),
            ]

    async def _leave_old_projects(self, out: SinkWrites) -> None:
        """Tombstone the keys an object left behind in the project it had in the index.

        One realtime multi-get for the chunk's documents (and rows quarantined this time,
        which are not written): a document indexed under another project than its row's now
        loses that project's object key (Redis; the search document is overwritten) and
        its alias there; a quarantined one is removed from that project in both sinks. An
        alias whose value changed within the project is tombstoned too. Alias tombstones
        take the indexed document's version: every alias write of that value by this
        object is at or below it (an equal version wins), every later claim above it.
        """
        if self._indexed_owners is None:
            return
        current: dict[tuple[ObjectKind, str], tuple[str | None, str | None, int, bool]] = {}
        for document, version in out.documents:
            alias = _alias_value(document)
            current[(document.kind, document.object_id)] = (
                document.project_id,
                alias,
                version,
                True,
            )
        for row in out.quarantined:
            current.setdefault(
                (row.kind, row.object_id), (row.project_id, None, row.version, False)
            )
        if not current:
            return
        owners = await self._indexed_owners(list(current))
        for (kind, object_id), owner in owners.items():
            project_id, alias, version, written = current[(kind, object_id)]
            moved = project_id is not None and owner.project_id != project_id
            if moved:
                removal = RemovedObject(kind, owner.project_id, object_id, version)
                (out.moved if written else out.removed).append(removal)
            if owner.alias is not None and (moved or (written and owner.alias != alias)):
                out.remove_alias(kind, owner.project_id, owner.alias, owner.version)

    async def _api_keys(self, marks: dict[str, Mark], out: SinkWrites) -> None:
        rows = await self._source.api_keys_by_ids(sorted(marks))
        found: set[str] = set()
        for row in rows:
            found.add(row["id"])
            key = ApiKeyRow(
                app_id=row["id"],
                project_id=row["project_id"],
                token_sha256=row["token_sha256"],
                rate_limit_per_minute=row["rate_limit_per_minute"],
                revoked=row["revoked_at"] is not None,
            )
            out.api_keys.append((key, marks[row["id"]].version))
        for app_id, mark in marks.items():
            if app_id not in found:
                out.removed_api_keys.append((app_id, mark.project_id or "", mark.version))


def _wall_clock_us() -> int:
    return time.time_ns() // 1000


def _occurred(touched: TouchedObjects, version: int, now_us: int) -> int:
    """When a change at ``version`` happened: its commit time, or now for a load."""
    return touched.commit_times.get(version, now_us)


def _alias_value(document: Document) -> str | None:
    spec = ALIAS_OF_KIND.get(document.kind)
    value = document.body.get(spec.field) if spec is not None else None
    return None if value is None else str(value)
