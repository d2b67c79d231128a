"""Turn the objects a batch touched into the writes both sinks apply, in bounded chunks.

Fan-out is resolved against the source (a renamed campaign's vouchers, every customer of a
project whose auto-update segments changed), then each touched object is rebuilt from the
source; an object the source no longer has becomes a versioned removal.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from cache.types import ObjectKind
from indexer import metrics
from indexer.changes import Mark, TouchedObjects
from indexer.documents import (
    Document,
    SegmentMatcher,
    campaign_document,
    customer_document,
    segment_document,
    voucher_document,
)
from indexer.segment_filter import InvalidSegmentFilter, compile_filter
from indexer.source import DocumentSource

log = logging.getLogger(__name__)

ExistingIds = Callable[[ObjectKind], AsyncIterator[tuple[str, str]]]

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


@dataclass(frozen=True, slots=True)
class RemovedObject:
    kind: ObjectKind
    project_id: str
    object_id: str
    version: int


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

    def __len__(self) -> int:
        return (
            len(self.documents)
            + len(self.removed)
            + len(self.removed_codes)
            + len(self.removed_source_ids)
            + len(self.api_keys)
            + len(self.removed_api_keys)
        )


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@functools.lru_cache(maxsize=4096)
def _compiled(segment_id: str, filter_json: bytes) -> SegmentMatcher | str:
    """A segment's compiled filter, or the reason it is invalid.

    Cached across batches by the filter's text: every batch that rebuilds a customer needs
    its project's filters, and an invalid one is reported once, not on every batch.
    """
    try:
        return compile_filter(orjson.loads(filter_json))
    except InvalidSegmentFilter as error:
        log.warning(
            "segment filter invalid", extra={"segment_id": segment_id, "reason": str(error)}
        )
        metrics.INVALID_FILTERS.inc()
        return str(error)


class SegmentFilters:
    """Compiled auto-update filters per project, loaded on demand for one batch."""

    def __init__(self, source: DocumentSource) -> None:
        self._source = source
        self._by_project: dict[str, list[tuple[str, SegmentMatcher]]] = {}

    async def load(self, project_ids: Iterable[str]) -> None:
        missing = sorted({p for p in project_ids if p not in self._by_project})
        if not missing:
            return
        for project_id in missing:
            self._by_project[project_id] = []
        for row in await self._source.auto_segments(missing):
            compiled = _compiled(
                row["id"], orjson.dumps(row["filter"], option=orjson.OPT_SORT_KEYS)
            )
            if isinstance(compiled, str):
                continue  # a malformed filter leaves its segment empty; reported once
            self._by_project[row["project_id"]].append((row["id"], compiled))

    def of(self, project_id: str) -> list[tuple[str, SegmentMatcher]]:
        return self._by_project.get(project_id, [])


class Rebuilder:
    """Rebuilds touched objects from a :class:`DocumentSource` into :class:`SinkWrites`."""

    def __init__(
        self,
        source: DocumentSource,
        *,
        chunk_ids: int = 2000,
    ) -> None:
        self._source = source
        self._chunk_ids = chunk_ids

    async def expand(self, touched: TouchedObjects, existing_ids: ExistingIds | None) -> None:
        """Resolve fan-out that needs the source, marking the objects it reaches."""
        if touched.renamed_campaigns:
            for row in await self._source.voucher_ids_of_campaigns(
                sorted(touched.renamed_campaigns)
            ):
                # Vouchers of a campaign are found by their current campaign: a voucher that
                # left the campaign was touched by its own change.
                version = touched.renamed_campaigns[row["campaign_id"]]
                touched.mark(ObjectKind.VOUCHER, row["id"], row["project_id"], version)
        if touched.resegmented_projects:
            for row in await self._source.customer_ids_of_projects(
                sorted(touched.resegmented_projects)
            ):
                version = touched.resegmented_projects[row["project_id"]]
                touched.mark(ObjectKind.CUSTOMER, row["id"], row["project_id"], version)
        if touched.truncated_tables:
            version = max(touched.truncated_tables.values())
            await self._mark_everything(touched, version, existing_ids)

    async def _mark_everything(
        self, touched: TouchedObjects, version: int, existing_ids: ExistingIds | None
    ) -> None:
        # A truncate names no rows: every object indexed, and every row still in the source,
        # is rebuilt; whatever the source lacks is removed. Truncates are rare and this is
        # the one answer that stays right whatever the cascade touched.
        for kind in _KIND_OF_TABLE.values():
            if existing_ids is not None:
                async for object_id, project_id in existing_ids(kind):
                    touched.mark(kind, object_id, project_id, version)
            async for ids in self._source.primary_key_chunks(
                self._source.primary_keys_query(kind), self._chunk_ids
            ):
                for object_id in ids:
                    touched.mark(kind, object_id, None, version)
        async for ids in self._source.primary_key_chunks("primary_keys_api_keys", self._chunk_ids):
            for app_id in ids:
                touched.mark_api_key(app_id, None, version)

    async def writes(self, touched: TouchedObjects) -> AsyncIterator[SinkWrites]:
        """Chunks of writes covering every touched object, aliases and API key."""
        first = SinkWrites(
            removed_codes=[(p, c, v) for (p, c), v in touched.removed_codes.items()],
            removed_source_ids=[(p, s, v) for (p, s), v in touched.removed_source_ids.items()],
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
                await self._rebuild_chunk(kind, dict(chunk), out, filters)
                if len(out) >= self._chunk_ids:
                    yield out
                    out = SinkWrites()
        if len(out):
            yield out

    async def _rebuild_chunk(
        self,
        kind: ObjectKind,
        marks: dict[str, Mark],
        out: SinkWrites,
        filters: SegmentFilters,
    ) -> None:
        rows = await self._source.rows_by_ids(kind, sorted(marks))
        found: set[str] = set()
        if kind is ObjectKind.CUSTOMER:
            await filters.load(row["project_id"] for row in rows)
        for row in rows:
            object_id = row["id"]
            found.add(object_id)
            if kind is ObjectKind.CUSTOMER:
                document = customer_document(row, filters.of(row["project_id"]))
            else:
                document = _BUILDERS[kind](row)
            out.documents.append((document, marks[object_id].version))
        for object_id, mark in marks.items():
            if object_id not in found and mark.project_id is not None:
                out.removed.append(RemovedObject(kind, mark.project_id, object_id, mark.version))

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
