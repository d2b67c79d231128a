"""What the segment recompute and the clock tick read from Elasticsearch.

Customer documents carry their membership (``segment_ids``) and the filter view every
auto-update filter is compiled against (``indexer.segment_query``), so a segment's members are
found by one query per page, with no read of the source. Candidates come from searches
(refreshed data, in id order, a page at a time) with their source and version: what a
decision and a rewrite rest on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from elasticsearch import AsyncElasticsearch

from cache.boundary import elasticsearch_boundary
from cache.readmodel.indices import Field, IndexNames
from cache.types import ObjectKind
from indexer.segment_view import FilterView, filter_view, view_terms

AUTO_UPDATE = "auto-update"


@dataclass(slots=True)
class IndexedCustomer:
    """A customer document as found: its ``_source`` and the version it was written at."""

    customer_id: str
    project_id: str
    source: dict[str, Any]
    version: int
    # Computed once, for the decision and the rewrite alike.
    _view: FilterView | None = field(default=None, repr=False, compare=False)

    def view(self) -> FilterView:
        if self._view is None:
            self._view = filter_view(self.body)
        return self._view

    def indexed_view(self) -> dict[str, list[str]]:
        """The indexed filter view terms, as stored with the document (computed again only
        for a document stored without them)."""
        stored = self.source.get(Field.FILTER_VIEW)
        if isinstance(stored, dict):
            return stored
        return view_terms(self.view())

    @property
    def body(self) -> dict[str, Any]:
        body = self.source.get(Field.DOC)
        return body if isinstance(body, dict) else {}

    @property
    def segment_ids(self) -> list[str]:
        ids = self.source.get(Field.SEGMENT_IDS) or []
        return [i for i in ids if isinstance(i, str)]


@dataclass(frozen=True, slots=True)
class IndexedSegment:
    segment_id: str
    project_id: str
    type: str
    filter: Any


class SegmentIndex:
    def __init__(self, client: AsyncElasticsearch, prefix: str) -> None:
        self._client = client
        self._names = IndexNames(prefix)

    @property
    def customers_alias(self) -> str:
        return self._names.alias(ObjectKind.CUSTOMER)

    @elasticsearch_boundary
    async def segment(self, segment_id: str) -> IndexedSegment | None:
        """The segment as indexed now (realtime), or None when it is not indexed."""
        found = await self._client.options(ignore_status=404).get(
            index=self._names.alias(ObjectKind.SEGMENT),
            id=segment_id,
            realtime=True,
            source_includes=[Field.PROJECT_ID, Field.DOC],
        )
        if not found.body.get("found"):
            return None
        return _segment(segment_id, found.body.get("_source"))

    @elasticsearch_boundary
    async def auto_segments(self, page: int = 500) -> AsyncIterator[IndexedSegment]:
        """Every auto-update segment of every project, in id order; segment writes
        acknowledged so far are made visible first (a segment created just now counts)."""
        await self._client.indices.refresh(index=self._names.alias(ObjectKind.SEGMENT))
        after: list[Any] | None = None
        while True:
            response = await self._client.search(
                allow_partial_search_results=False,
                index=self._names.alias(ObjectKind.SEGMENT),
                size=page,
                query={"term": {Field.TYPE: AUTO_UPDATE}},
                source_includes=[Field.PROJECT_ID, Field.DOC],
                sort=[{Field.ID: "asc"}],
                search_after=after,
            )
            hits = response["hits"]["hits"]
            for hit in hits:
                segment = _segment(hit["_id"], hit.get("_source"))
                if segment is not None:
                    yield segment
            if len(hits) < page:
                return
            after = hits[-1]["sort"]

    @elasticsearch_boundary
    async def refresh_customers(self) -> None:
        """Make every customer write acknowledged so far visible to the searches below."""
        await self._client.indices.refresh(index=self.customers_alias)

    @elasticsearch_boundary
    async def candidates(
        self, query: dict[str, Any], *, after: str | None, size: int
    ) -> list[IndexedCustomer]:
        """One page of the customers matching ``query``, after ``after`` in id order, with
        the source and version each hit was found at.

        A hit may be older than the document by now (searches see the last refresh): a
        decision on it is written at the version it was read at, which Elasticsearch refuses
        (``external_gte``) once a newer rebuild is in, as the membership store refuses its
        record (the rebuild's base is newer than the job).
        """
        response = await self._client.search(
            allow_partial_search_results=False,
            index=self.customers_alias,
            size=size,
            query=query,
            version=True,
            sort=[{Field.ID: "asc"}],
            search_after=[after] if after is not None else None,
            track_total_hits=False,
        )
        found: list[IndexedCustomer] = []
        for hit in response["hits"]["hits"]:
            source = hit.get("_source")
            if not isinstance(source, dict) or not isinstance(source.get(Field.PROJECT_ID), str):
                continue
            found.append(
                IndexedCustomer(
                    str(hit["_id"]), source[Field.PROJECT_ID], source, int(hit["_version"])
                )
            )
        return found


def _segment(segment_id: str, source: Any) -> IndexedSegment | None:
    if not isinstance(source, dict):
        return None
    body = source.get(Field.DOC)
    project_id = source.get(Field.PROJECT_ID)
    if not isinstance(body, dict) or not isinstance(project_id, str):
        return None
    return IndexedSegment(segment_id, project_id, str(body.get("type")), body.get("filter"))
