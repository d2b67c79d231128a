"""The search sink: versioned bulk writes of documents into Elasticsearch.

Every write carries ``version_type=external_gte`` with the commit LSN as version, so an
older write is refused by Elasticsearch itself and a replayed batch changes nothing.
Index and field names come from ``cache.readmodel.indices``; driver errors are translated by
``cache.boundary.elasticsearch_boundary``, which every public method carries.

Bulk requests are cut at :data:`MAX_BULK_BYTES`; one the node still refuses as too large
(413, over its ``http.max_content_length``) is halved until every part passes, down to a
single document, which is then refused for good. Documents refused for good (alone too large,
or an item error such as a mapping error) are returned to the caller, which quarantines their
rows; item errors that may pass later (429, 5xx) and request-level 429/5xx raise
``SearchUnavailable`` (the boundary's classification), so the batch is retried.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import elasticsearch
import orjson
from elasticsearch import AsyncElasticsearch

from cache.boundary import elasticsearch_boundary
from cache.errors import SearchUnavailable
from cache.readmodel.documents import ALIAS_OF_KIND, INDEXED_KINDS
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

# Far below Elasticsearch's default http.max_content_length (100mb): a bulk request this size
# is cheap to send again, and to halve when a node has a lower limit.
MAX_BULK_BYTES: Final = 8 * 1024 * 1024
_TOO_LARGE: Final = 413

# Statuses after which retrying the same item cannot succeed: a mapping or validation error
# is a bug to report, not an outage to wait out.
_PERMANENT_ITEM_ERRORS = frozenset({400})


@dataclass(frozen=True, slots=True)
class VersionedDelete:
    kind: ObjectKind
    object_id: str
    version: int


@dataclass(frozen=True, slots=True)
class RefusedDocument:
    """A document or delete Elasticsearch refused for good, and why."""

    kind: ObjectKind
    object_id: str
    project_id: str | None
    version: int
    reason: str


@dataclass(slots=True)
class BulkResult:
    applied: int = 0
    refused: list[RefusedDocument] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class IndexedOwner:
    """What the index holds of a document's tenancy: its project, its alias value (code,
    source_id) and the version it was written with."""

    project_id: str
    alias: str | None
    version: int


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """A document as the index holds it: its whole ``_source`` and its version."""

    source: dict[str, Any]
    version: int


# ``(id, _source, version)`` of one stored document.
StoredPage = tuple[str, dict[str, Any], int]


@dataclass(frozen=True, slots=True)
class _Item:
    kind: ObjectKind
    object_id: str
    project_id: str | None
    version: int
    lines: bytes  # the action line and, for an index, the source line, each ending in \n

    def refused(self, reason: str) -> RefusedDocument:
        return RefusedDocument(self.kind, self.object_id, self.project_id, self.version, reason)


def _groups(items: Sequence[_Item], limit: int) -> Iterator[Sequence[_Item]]:
    """Consecutive items whose bodies together stay within ``limit`` bytes (at least one)."""
    start = size = 0
    for index, item in enumerate(items):
        if index > start and size + len(item.lines) > limit:
            yield items[start:index]
            start, size = index, 0
        size += len(item.lines)
    if start < len(items):
        yield items[start:]


class ElasticSink:
    """Writes to, and reads of, the indices of one prefix. ``shards`` and ``replicas`` (by
    kind; absent kinds: 1 and 0) shape the indices it creates; replicas are also put back
    after a load, which runs without any, and on the serving indices by
    :meth:`apply_replicas`. Every search refuses partial results: a shard without a live copy
    (its node lost, a replica not promoted yet) fails the request, which is retried, rather
    than a scan that misses documents."""

    def __init__(
        self,
        client: AsyncElasticsearch,
        prefix: str,
        *,
        refresh_interval: str = "250ms",
        shards: Mapping[str, int] | None = None,
        replicas: Mapping[str, int] | None = None,
    ) -> None:
        self._client = client
        self._names = IndexNames(prefix)
        self._refresh_interval = refresh_interval
        self._shards = dict(shards or {})
        self._replicas = dict(replicas or {})
        # Kind -> the index of a generation being loaded (empty: write through the aliases).
        self._write_target: dict[ObjectKind, str] = {}
        # Kind -> the index every read and write of this sink uses instead of the alias
        # (``pinned``: a reindex catching its generation up before it serves).
        self._pinned: dict[ObjectKind, str] = {}

    @property
    def prefix(self) -> str:
        return self._names.prefix

    def pinned(self, generation: int, kinds: Sequence[ObjectKind]) -> ElasticSink:
        """A sink on the same client whose reads and writes of ``kinds`` go to that
        generation's indices instead of the aliases (other kinds: the aliases)."""
        sink = ElasticSink(
            self._client,
            self._names.prefix,
            refresh_interval=self._refresh_interval,
            shards=self._shards,
            replicas=self._replicas,
        )
        sink._pinned = {kind: self._names.generation(kind, generation) for kind in kinds}
        return sink

    @property
    def client(self) -> AsyncElasticsearch:
        return self._client

    def alias(self, kind: ObjectKind) -> str:
        return self._pinned.get(kind) or self._names.alias(kind)

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
    async def create_indices(
        self,
        generation: int,
        meta: dict[str, Any],
        *,
        kinds: Sequence[ObjectKind] = INDEXED_KINDS,
        loading: bool = False,
    ) -> bool:
        """Create a fresh generation of the indices of ``kinds`` beside the one serving, and
        direct this sink's writes at it (:meth:`switch_to` moves the aliases once it is
        loaded). Returns whether an earlier generation serves meanwhile.

        Without a serving generation (a first load, or aliases gone), the aliases point at
        the new one at once: there is nothing else to answer from. Generations left over by
        a load that died before its switch are deleted first, by name (clusters may refuse
        wildcard deletes); the serving one stays. ``loading``: refresh is off until
        :meth:`end_loading` (a bulk load then writes segments once, not every interval).
        """
        serving = await self._serving_indices()
        new_names = {kind: self._names.generation(kind, generation) for kind in kinds}
        await self._delete_generations(keep=set(serving), kinds=kinds)
        for kind, name in new_names.items():
            # A load writes each document once, to the primaries only: replicas are copied
            # afterwards as whole segments (``end_loading``), instead of indexing it twice.
            settings = index_settings(
                "-1" if loading else self._refresh_interval,
                shards=self._shards.get(kind, 1),
                replicas=0 if loading else self._replicas.get(kind, 0),
            )
            await self._client.indices.create(
                index=name,
                settings=settings,
                mappings={**index_mappings(kind), "_meta": meta},
            )
        self._write_target = dict(new_names)
        serving_kinds = set(serving.values())
        if all(self._names.alias(kind) in serving_kinds for kind in kinds):
            return True
        await self.switch_to(generation, kinds=kinds)
        return False

    @elasticsearch_boundary
    async def end_loading(self, generation: int, kinds: Sequence[ObjectKind]) -> None:
        """Put refresh and replicas back on a generation loaded without, and refresh it once.
        The replicas are copied in the background: the generation serves meanwhile (yellow)."""
        for kind in kinds:
            await self._client.indices.put_settings(
                index=self._names.generation(kind, generation),
                settings={
                    "index": {
                        "refresh_interval": self._refresh_interval,
                        "number_of_replicas": self._replicas.get(kind, 0),
                    }
                },
            )
        names = ",".join(self._names.generation(kind, generation) for kind in kinds)
        await self._client.indices.refresh(index=names)

    @elasticsearch_boundary
    async def set_serving_refresh(self, interval: str | None) -> None:
        """Refresh the serving indices every ``interval`` (None: the configured interval,
        with one refresh at once, so that what was written under a longer interval is
        searchable now). A generation being loaded keeps its own setting: it is not behind
        the aliases."""
        names = ",".join(self.alias(kind) for kind in INDEXED_KINDS)
        await self._client.indices.put_settings(
            index=names,
            settings={"index": {"refresh_interval": interval or self._refresh_interval}},
        )
        if interval is None:
            await self._client.indices.refresh(index=names)

    @elasticsearch_boundary
    async def apply_replicas(self, kinds: Sequence[ObjectKind] = INDEXED_KINDS) -> None:
        """Give the serving indices the configured replicas (a changed ``LOYALTY_ES_REPLICAS``
        takes effect at the next start, without a reindex)."""
        for kind in kinds:
            await self._client.indices.put_settings(
                index=self.alias(kind),
                settings={"index": {"number_of_replicas": self._replicas.get(kind, 0)}},
            )

    @elasticsearch_boundary
    async def generation_exists(self, generation: int, kinds: Sequence[ObjectKind]) -> bool:
        names = ",".join(self._names.generation(kind, generation) for kind in kinds)
        return bool(await self._client.indices.exists(index=names))

    @elasticsearch_boundary
    async def delete_generation(self, generation: int, kinds: Sequence[ObjectKind]) -> list[str]:
        """Delete the indices of a generation that does not serve; returns those deleted."""
        serving = await self._serving_indices()
        deleted: list[str] = []
        for kind in kinds:
            name = self._names.generation(kind, generation)
            if name in serving:
                continue
            response = await self._client.options(ignore_status=404).indices.delete(index=name)
            if response.meta.status == 200:
                deleted.append(name)
        return deleted

    @elasticsearch_boundary
    async def delete_idle_generations(self) -> list[str]:
        """Delete every generation no alias points at; returns those deleted."""
        serving = set(await self._serving_indices())
        idle = [name for name in await self.generation_names() if name not in serving]
        for name in idle:
            await self._client.options(ignore_status=404).indices.delete(index=name)
        return idle

    @elasticsearch_boundary
    async def generation_names(self) -> list[str]:
        """Every index of every generation under this prefix, serving or not."""
        found: list[str] = []
        for kind in INDEXED_KINDS:
            response = await self._client.indices.get(
                index=self._names.generations_pattern(kind), expand_wildcards="all"
            )
            found.extend(response.body)
        return sorted(found)

    @elasticsearch_boundary
    async def switch_to(
        self, generation: int, *, kinds: Sequence[ObjectKind] = INDEXED_KINDS
    ) -> None:
        """Point the aliases of ``kinds`` at ``generation`` in one alias request (readers
        move from one complete generation to the next at once), write through the aliases
        again, and delete the generations of those kinds that served before."""
        serving = await self._serving_indices()
        actions: list[dict[str, Any]] = []
        for kind in kinds:
            alias = self._names.alias(kind)
            new_index = self._names.generation(kind, generation)
            for old_index in sorted(
                index for (index, name) in serving.items() if name == alias and index != new_index
            ):
                actions.append({"remove": {"index": old_index, "alias": alias}})
            actions.append({"add": {"index": new_index, "alias": alias}})
        await self._client.indices.update_aliases(actions=actions)
        self._write_target = {}
        keep = {self._names.generation(kind, generation) for kind in kinds}
        await self._delete_generations(keep=keep, kinds=kinds)

    async def _serving_indices(self) -> dict[str, str]:
        """Index name -> alias, for every index behind one of this sink's aliases."""
        found = await self._client.options(ignore_status=404).indices.get_alias(
            name=",".join(self._names.aliases())
        )
        if found.meta.status != 200:
            return {}
        return {
            index: alias
            for index, body in found.body.items()
            for alias in body.get("aliases", {})
            if alias in self._names.aliases()
        }

    async def _delete_generations(
        self, *, keep: set[str], kinds: Sequence[ObjectKind] = INDEXED_KINDS
    ) -> None:
        for kind in kinds:
            found = await self._client.indices.get(
                index=self._names.generations_pattern(kind), expand_wildcards="all"
            )
            for stale in sorted(set(found.body) - keep):
                await self._client.options(ignore_status=404).indices.delete(index=stale)

    def _target(self, kind: ObjectKind) -> str:
        """Where writes of a kind go: the generation being loaded, else the alias."""
        return self._write_target.get(kind) or self.alias(kind)

    @elasticsearch_boundary
    async def set_meta(
        self,
        meta: dict[str, Any],
        *,
        serving: bool = False,
        kinds: Sequence[ObjectKind] = INDEXED_KINDS,
    ) -> None:
        """Stamp ``meta`` on the generation being written (``serving``: on the one behind
        the aliases, whatever is being loaded)."""
        for kind in kinds:
            index = self.alias(kind) if serving else self._target(kind)
            await self._client.indices.put_mapping(index=index, meta=meta)

    @elasticsearch_boundary
    async def drop_indices(self) -> None:
        for kind in INDEXED_KINDS:
            await self._client.options(ignore_status=404).indices.delete(
                index=self._names.generations_pattern(kind), expand_wildcards="all"
            )

    @elasticsearch_boundary
    async def apply(
        self, documents: Sequence[tuple[Document, int]], deletes: Sequence[VersionedDelete]
    ) -> BulkResult:
        """Write documents and deletes; returns how many items Elasticsearch applied and the
        documents it refused for good.

        A version conflict means a newer version is already there: success. A delete of a
        missing document still records its version: success. Transient item failures (429,
        5xx) raise :class:`SearchUnavailable` so the whole batch is retried, which is safe
        because every item is idempotent.
        """
        result = BulkResult()
        items = self._encode(documents, deletes, result)
        for group in _groups(items, MAX_BULK_BYTES):
            await self._send(group, result)
        return result

    def _encode(
        self,
        documents: Sequence[tuple[Document, int]],
        deletes: Sequence[VersionedDelete],
        result: BulkResult,
    ) -> list[_Item]:
        # The body is encoded here with orjson, line by line: the client's own JSON encoder
        # costs more than the rest of the batch on large snapshots.
        items: list[_Item] = []
        for document, version in documents:
            action = {
                "index": {
                    "_index": self._target(document.kind),
                    "_id": document.object_id,
                    "version": version,
                    "version_type": "external_gte",
                }
            }
            try:
                source = orjson.dumps(
                    search_source(
                        document.object_id, document.project_id, document.body, document.fields
                    )
                )
            except TypeError as error:  # orjson.JSONEncodeError is one
                reason = f"cannot be encoded as JSON: {error}"
                result.refused.append(
                    RefusedDocument(
                        document.kind, document.object_id, document.project_id, version, reason
                    )
                )
                continue
            lines = orjson.dumps(action) + b"\n" + source + b"\n"
            items.append(
                _Item(document.kind, document.object_id, document.project_id, version, lines)
            )
        for delete in deletes:
            action = {
                "delete": {
                    "_index": self._target(delete.kind),
                    "_id": delete.object_id,
                    "version": delete.version,
                    "version_type": "external_gte",
                }
            }
            lines = orjson.dumps(action) + b"\n"
            items.append(_Item(delete.kind, delete.object_id, None, delete.version, lines))
        return items

    async def _send(self, items: Sequence[_Item], result: BulkResult) -> None:
        """One bulk request; halved while the node refuses it as too large (413)."""
        body = b"".join(item.lines for item in items)
        try:
            # The client passes a pre-encoded ndjson body through unchanged.
            response = await self._client.bulk(operations=cast(Any, body))
        except elasticsearch.ApiError as error:
            # Any other status is the boundary's to classify (429 and 5xx: an outage).
            if error.meta.status != _TOO_LARGE:
                raise
            if len(items) == 1:
                result.refused.append(
                    items[0].refused(
                        f"elasticsearch: 413 request too large: the document alone makes a "
                        f"bulk request of {len(body)} bytes, over the node's "
                        f"http.max_content_length"
                    )
                )
                return
            log.info(
                "bulk request too large, halving it",
                extra={"items": len(items), "bytes": len(body)},
            )
            middle = len(items) // 2
            await self._send(items[:middle], result)
            await self._send(items[middle:], result)
            return
        if not response.get("errors"):
            result.applied += len(response["items"])
            return
        transient: list[dict[str, Any]] = []
        for item, outcome in zip(items, response["items"], strict=True):
            answer = next(iter(outcome.values()))
            status = int(answer.get("status", 500))
            if status < 300 or status in (404, 409):
                result.applied += 1
            elif status in _PERMANENT_ITEM_ERRORS:
                cause = answer.get("error") or {}
                detail = cause.get("reason") if isinstance(cause, dict) else cause
                kind = cause.get("type") if isinstance(cause, dict) else None
                result.refused.append(item.refused(f"elasticsearch: {status} {kind}: {detail}"))
            else:
                transient.append(answer)
        if transient:
            raise SearchUnavailable(f"elasticsearch refused {len(transient)} items: {transient[0]}")

    @elasticsearch_boundary
    async def indexed_owners(
        self, keys: Sequence[tuple[ObjectKind, str]]
    ) -> dict[tuple[ObjectKind, str], IndexedOwner]:
        """The project and alias value each of these documents has in the index now (a
        realtime multi-get, one request): how a move between projects is seen when the
        change itself does not carry the old project (default replica identity)."""
        if not keys:
            return {}
        wanted: list[dict[str, Any]] = []
        for kind, object_id in keys:
            includes = [Field.PROJECT_ID]
            alias = ALIAS_OF_KIND.get(kind)
            if alias is not None:
                includes.append(f"{Field.DOC}.{alias.field}")
            wanted.append({"_index": self.alias(kind), "_id": object_id, "_source": includes})
        response = await self._client.mget(docs=wanted, realtime=True)
        owners: dict[tuple[ObjectKind, str], IndexedOwner] = {}
        for (kind, object_id), found in zip(keys, response["docs"], strict=True):
            stored = found.get("_source") if found.get("found") else None
            if not isinstance(stored, dict) or stored.get(Field.PROJECT_ID) is None:
                continue  # not indexed (or its index missing: the write will say so)
            alias = ALIAS_OF_KIND.get(kind)
            body = stored.get(Field.DOC)
            value = body.get(alias.field) if alias is not None and isinstance(body, dict) else None
            owners[(kind, object_id)] = IndexedOwner(
                str(stored[Field.PROJECT_ID]),
                None if value is None else str(value),
                int(found.get("_version", 0)),
            )
        return owners

    @elasticsearch_boundary
    async def stored(self, kind: ObjectKind, ids: Sequence[str]) -> dict[str, StoredDocument]:
        """The documents of these ids the index holds now (one realtime multi-get)."""
        if not ids:
            return {}
        response = await self._client.mget(index=self.alias(kind), ids=list(ids), realtime=True)
        found: dict[str, StoredDocument] = {}
        for doc in response["docs"]:
            if doc.get("found") and isinstance(doc.get("_source"), dict):
                found[doc["_id"]] = StoredDocument(doc["_source"], int(doc.get("_version", 0)))
        return found

    @elasticsearch_boundary
    async def owner_pages(
        self, kind: ObjectKind, project_id: str | None = None
    ) -> AsyncIterator[list[tuple[str, str, int]]]:
        """``(id, project_id, version)`` of every document of a kind (of one project, or of
        all), a page at a time in id order; refreshed data only."""
        query: dict[str, Any] = (
            {"match_all": {}} if project_id is None else {"term": {Field.PROJECT_ID: project_id}}
        )
        search_after: list[Any] | None = None
        while True:
            page = await self._client.search(
                allow_partial_search_results=False,
                index=self.alias(kind),
                size=SCAN_PAGE,
                source_includes=[Field.PROJECT_ID],
                sort=[{Field.ID: "asc"}],
                search_after=search_after,
                query=query,
                version=True,
            )
            hits = page["hits"]["hits"]
            if hits:
                yield [
                    (hit["_id"], str(hit["_source"][Field.PROJECT_ID]), int(hit["_version"]))
                    for hit in hits
                ]
            if len(hits) < SCAN_PAGE:
                return
            search_after = hits[-1]["sort"]

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
                allow_partial_search_results=False,
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
    async def source_pages(
        self, kind: ObjectKind, *, after: str | None, size: int = SCAN_PAGE
    ) -> AsyncIterator[list[StoredPage]]:
        """``(id, _source, version)`` of every document of a kind after ``after``, a page at
        a time in id order (refreshed data only): what a copy into a new generation reads."""
        search_after: list[Any] | None = None if after is None else [after]
        while True:
            page = await self._client.search(
                allow_partial_search_results=False,
                index=self.alias(kind),
                size=size,
                sort=[{Field.ID: "asc"}],
                search_after=search_after,
                query={"match_all": {}},
                version=True,
            )
            hits = page["hits"]["hits"]
            if hits:
                yield [(hit["_id"], hit["_source"], int(hit["_version"])) for hit in hits]
            if len(hits) < size:
                return
            search_after = hits[-1]["sort"]

    @elasticsearch_boundary
    async def apply_sources(self, kind: ObjectKind, pages: Sequence[StoredPage]) -> BulkResult:
        """Write stored ``_source`` documents as they are, each at its own version (a copy
        between generations: a newer write already there wins, as for any write)."""
        result = BulkResult()
        target = self._target(kind)
        items: list[_Item] = []
        for object_id, source, version in pages:
            action = {
                "index": {
                    "_index": target,
                    "_id": object_id,
                    "version": version,
                    "version_type": "external_gte",
                }
            }
            lines = orjson.dumps(action) + b"\n" + orjson.dumps(source) + b"\n"
            owner = source.get(Field.PROJECT_ID)
            project_id = None if owner is None else str(owner)
            items.append(_Item(kind, object_id, project_id, version, lines))
        for group in _groups(items, MAX_BULK_BYTES):
            await self._send(group, result)
        return result

    @elasticsearch_boundary
    async def count(self, kind: ObjectKind) -> int:
        response = await self._client.count(index=self.alias(kind))
        return int(response["count"])

    @elasticsearch_boundary
    async def refresh(self) -> None:
        await self._client.indices.refresh(
            index=",".join(self._target(kind) for kind in INDEXED_KINDS)
        )
