"""The search sink: versioned bulk writes of documents into Elasticsearch.

Every write carries ``version_type=external_gte`` with the commit LSN as version, so an
older write is refused by Elasticsearch itself and a replayed batch changes nothing.
Index and field names come from ``cache.readmodel.indices``; driver errors are translated by
``cache.boundary.elasticsearch_boundary``, which every public method carries.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from elasticsearch import AsyncElasticsearch

from cache.boundary import elasticsearch_boundary
from cache.errors import SearchBug, SearchUnavailable
from cache.readmodel.documents import INDEXED_KINDS
from cache.readmodel.indices import (
    Field,
    IndexNames,
    index_mappings,
    index_settings,
    search_source,
)
from cache.types import ObjectKind
from indexer.documents import Document

log = logging.getLogger(__name__)

SCAN_PAGE = 1000

# Statuses after which retrying the same item cannot succeed: a mapping or validation error
# is a bug to report, not an outage to wait out.
_PERMANENT_ITEM_ERRORS = frozenset({400})


class RejectedDocuments(SearchBug):
    """Elasticsearch refused some documents for good (mapping errors): reported, not retried."""

    def __init__(self, failures: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(failures)} documents rejected, first: {failures[0]}")
        self.failures = failures


@dataclass(frozen=True, slots=True)
class VersionedDelete:
    kind: ObjectKind
    object_id: str
    version: int


class ElasticSink:
    def __init__(
        self, client: AsyncElasticsearch, prefix: str, *, refresh_interval: str = "250ms"
    ) -> None:
        self._client = client
        self._names = IndexNames(prefix)
        self._refresh_interval = refresh_interval

    @property
    def client(self) -> AsyncElasticsearch:
        return self._client

    def alias(self, kind: ObjectKind) -> str:
        return self._names.alias(kind)

    @elasticsearch_boundary
    async def indices_ready(self) -> dict[str, Any] | None:
        """The ``_meta`` of the voucher index when every alias exists, else None."""
        aliases = [self.alias(kind) for kind in INDEXED_KINDS]
        exists = await self._client.indices.exists_alias(name=",".join(aliases))
        if not exists:
            return None
        found = await self._client.indices.get_alias(name=",".join(aliases))
        if {a for body in found.values() for a in body["aliases"]} != set(aliases):
            return None
        mapping = await self._client.indices.get_mapping(index=self.alias(INDEXED_KINDS[0]))
        for body in mapping.values():
            meta: dict[str, Any] = body["mappings"].get("_meta", {})
            return meta
        return None

    @elasticsearch_boundary
    async def create_indices(self, generation: int, meta: dict[str, Any]) -> None:
        """Create a fresh generation of every index and point the aliases at it.

        Old generations behind the aliases are removed in the same alias call, so readers
        switch atomically, and then deleted with every other generation left over (by a load
        that crashed before its switch); this is only used for a first load or a forced
        rebuild. Deleted by name, not by wildcard: clusters may refuse wildcard deletes.
        """
        actions: list[dict[str, Any]] = []
        new_names: set[str] = set()
        for kind in INDEXED_KINDS:
            name = self._names.generation(kind, generation)
            new_names.add(name)
            await self._client.options(ignore_status=404).indices.delete(index=name)
            mappings = {**index_mappings(kind), "_meta": meta}
            await self._client.indices.create(
                index=name,
                settings=index_settings(self._refresh_interval),
                mappings=mappings,
            )
            old = await self._client.options(ignore_status=404).indices.get_alias(
                name=self.alias(kind)
            )
            for old_index in old.body if old.meta.status == 200 else {}:
                actions.append({"remove": {"index": old_index, "alias": self.alias(kind)}})
            actions.append({"add": {"index": name, "alias": self.alias(kind)}})
        await self._client.indices.update_aliases(actions=actions)
        for kind in INDEXED_KINDS:
            found = await self._client.indices.get(
                index=self._names.generations_pattern(kind), expand_wildcards="all"
            )
            for stale in sorted(set(found.body) - new_names):
                await self._client.options(ignore_status=404).indices.delete(index=stale)

    @elasticsearch_boundary
    async def set_meta(self, meta: dict[str, Any]) -> None:
        for kind in INDEXED_KINDS:
            await self._client.indices.put_mapping(index=self.alias(kind), meta=meta)

    @elasticsearch_boundary
    async def drop_indices(self) -> None:
        for kind in INDEXED_KINDS:
            await self._client.options(ignore_status=404).indices.delete(
                index=self._names.generations_pattern(kind), expand_wildcards="all"
            )

    @elasticsearch_boundary
    async def apply(
        self, documents: Sequence[tuple[Document, int]], deletes: Sequence[VersionedDelete]
    ) -> int:
        """Write documents and deletes; returns how many items Elasticsearch applied.

        A version conflict means a newer version is already there: success. A delete of a
        missing document still records its version: success. Transient item failures (429,
        5xx) raise :class:`SearchUnavailable` so the whole batch is retried, which is safe
        because every item is idempotent.
        """
        if not documents and not deletes:
            return 0
        # The body is encoded here with orjson, line by line: the client's own JSON encoder
        # costs more than the rest of the batch on large snapshots.
        lines: list[bytes] = []
        for document, version in documents:
            lines.append(
                orjson.dumps(
                    {
                        "index": {
                            "_index": self.alias(document.kind),
                            "_id": document.object_id,
                            "version": version,
                            "version_type": "external_gte",
                        }
                    }
                )
            )
            lines.append(
                orjson.dumps(
                    search_source(
                        document.object_id, document.project_id, document.body, document.fields
                    )
                )
            )
        for delete in deletes:
            lines.append(
                orjson.dumps(
                    {
                        "delete": {
                            "_index": self.alias(delete.kind),
                            "_id": delete.object_id,
                            "version": delete.version,
                            "version_type": "external_gte",
                        }
                    }
                )
            )
        lines.append(b"")
        operations = b"\n".join(lines)
        # The client passes a pre-encoded ndjson body through unchanged.
        response = await self._client.bulk(operations=cast(Any, operations))
        if not response.get("errors"):
            return len(response["items"])
        applied = 0
        transient: list[dict[str, Any]] = []
        permanent: list[dict[str, Any]] = []
        for item in response["items"]:
            result = next(iter(item.values()))
            status = int(result.get("status", 500))
            if status < 300 or status in (404, 409):
                applied += 1
            elif status in _PERMANENT_ITEM_ERRORS:
                permanent.append(result)
            else:
                transient.append(result)
        if transient:
            raise SearchUnavailable(f"elasticsearch refused {len(transient)} items: {transient[0]}")
        if permanent:
            raise RejectedDocuments(permanent)
        return applied

    @elasticsearch_boundary
    async def ids_of_kind(self, kind: ObjectKind) -> AsyncIterator[tuple[str, str]]:
        """Every ``(id, project_id)`` indexed for a kind, in pages (for truncations).

        Search sees only refreshed documents, so the index is refreshed first: a document
        written by the previous batch must not escape a truncate.
        """
        await self._client.indices.refresh(index=self.alias(kind))
        async for hit in self.scan(kind, source_includes=[Field.PROJECT_ID]):
            yield hit["_id"], hit["_source"][Field.PROJECT_ID]

    @elasticsearch_boundary
    async def scan(
        self, kind: ObjectKind, *, source_includes: list[str] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every hit of a kind's index in id order, a page at a time (refreshed data only)."""
        search_after: list[Any] | None = None
        while True:
            page = await self._client.search(
                index=self.alias(kind),
                size=SCAN_PAGE,
                source_includes=source_includes,
                sort=[{Field.ID: "asc"}],
                search_after=search_after,
                query={"match_all": {}},
            )
            hits = page["hits"]["hits"]
            for hit in hits:
                yield hit
            if len(hits) < SCAN_PAGE:
                return
            search_after = hits[-1]["sort"]

    @elasticsearch_boundary
    async def count(self, kind: ObjectKind) -> int:
        response = await self._client.count(index=self.alias(kind))
        return int(response["count"])

    @elasticsearch_boundary
    async def refresh(self) -> None:
        await self._client.indices.refresh(index=",".join(self._names.aliases()))
