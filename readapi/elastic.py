"""Elasticsearch reads of the read API: realtime GETs, term look-ups, counts and searches.

Index and field names come from ``cache.readmodel.indices``; ``_version`` is the commit LSN of
the document. Every driver error is classified by ``cache.boundary.classify_elasticsearch``
(in ``_call``, which every request goes through, and by the boundary every public method
carries): ``SearchUnavailable`` (the node cannot answer: 503, and the dependency is skipped for
a moment), ``SearchRejected`` (it refused a query built from a client's input: 400) or
``SearchBug`` (it refused a request of ours: logged as a bug, never counted as an outage).
Handlers never see an ``elasticsearch`` exception. Every call is one counted ES request.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from elastic_transport import ApiResponse, ObjectApiResponse
from elasticsearch import AsyncElasticsearch

from cache.boundary import classify_elasticsearch, elasticsearch_boundary
from cache.errors import SearchUnavailable, StoreUnavailable
from cache.readmodel.indices import Field, IndexNames
from cache.singleflight import SingleFlight
from cache.watermark import WatermarkHolder
from readapi.dependency import DependencyGate

log = logging.getLogger(__name__)

# What a lookup reads of a document: its tenant and the API object.
OBJECT_FIELDS = (Field.PROJECT_ID, Field.DOC)


@dataclass(frozen=True, slots=True)
class FoundDocument:
    object_id: str
    version: int
    source: dict[str, Any]


class SearchReader:
    def __init__(
        self,
        client: AsyncElasticsearch,
        prefix: str,
        gate: DependencyGate,
        *,
        watermark: WatermarkHolder | None = None,
    ) -> None:
        """``watermark``: the process's applied watermark, which ``refresh`` needs to know
        what a refresh covers (without it every refresh is done as asked)."""
        self.client = client
        self.names = IndexNames(prefix)
        self.gate = gate
        # Requests sent, per operation: read by metrics and by tests counting requests.
        self.requests: Counter[str] = Counter()
        self._watermark = watermark
        # kind -> the watermark current when the last completed refresh of its index began.
        self._refreshed: dict[str, int] = {}
        self._refreshes: SingleFlight[tuple[str, int, bool], None] = SingleFlight()

    def alias(self, kind: str) -> str:
        return self.names.alias(kind)

    @elasticsearch_boundary
    async def get(
        self, kind: str, object_id: str, fields: Sequence[str] = OBJECT_FIELDS
    ) -> FoundDocument | None:
        """Realtime GET: sees every write Elasticsearch acknowledged, refreshed or not."""
        if not object_id.strip("."):
            # "." and ".." in a URL path are dot segments: the GET would reach another
            # endpoint. A multi-get carries the id in its body instead.
            found = await self.mget(kind, [object_id], fields)
            return found[0] if found else None
        response = await self._call(
            "get",
            self.client.options(ignore_status=404).get(
                index=self.alias(kind), id=object_id, realtime=True, source_includes=list(fields)
            ),
        )
        body = response.body
        if "found" not in body:
            # A 404 without "found" is a missing index, not a missing document.
            raise SearchUnavailable(f"index {self.alias(kind)} is missing")
        if not body["found"]:
            return None
        return FoundDocument(object_id, int(body["_version"]), dict(body["_source"]))

    @elasticsearch_boundary
    async def find_one(
        self, kind: str, project_id: str, field: str, value: str
    ) -> tuple[str, int] | None:
        """(id, version) of the document of ``project_id`` whose keyword ``field`` equals
        ``value`` (a search: it sees the last refresh, not later writes)."""
        response = await self._whole(
            "search",
            lambda: self.client.search(
                index=self.alias(kind),
                query={"bool": {"filter": [
                    {"term": {Field.PROJECT_ID: project_id}},
                    {"term": {field: value}},
                ]}},
                size=1,
                source=False,
                version=True,
                track_total_hits=False,
            ),
        )
        hits = response.body["hits"]["hits"]
        return (str(hits[0]["_id"]), int(hits[0]["_version"])) if hits else None

    @elasticsearch_boundary
    async def count(self, kind: str, query: Mapping[str, Any]) -> int:
        response = await self._whole(
            "count", lambda: self.client.count(index=self.alias(kind), query=dict(query))
        )
        return int(response.body["count"])

    @elasticsearch_boundary
    async def search(self, kind: str, **params: Any) -> dict[str, Any]:
        response = await self._whole(
            "search", lambda: self.client.search(index=self.alias(kind), **params)
        )
        body: dict[str, Any] = response.body
        return body

    @elasticsearch_boundary
    async def mget(
        self, kind: str, ids: Sequence[str], fields: Sequence[str]
    ) -> list[FoundDocument]:
        """The documents of ``ids`` that exist, in the order asked (realtime)."""
        if not ids:
            return []
        response = await self._call(
            "mget",
            self.client.mget(
                index=self.alias(kind), ids=list(ids), source_includes=list(fields), realtime=True
            ),
        )
        found: list[FoundDocument] = []
        for item in response.body["docs"]:
            if item.get("found"):
                found.append(FoundDocument(item["_id"], int(item["_version"]), item["_source"]))
            elif "error" in item:
                raise SearchUnavailable(f"mget item failed: {item['error']}")
        return found

    @elasticsearch_boundary
    async def refresh(self, kind: str, watermark: int) -> None:
        """Make every write up to ``watermark`` searchable (for ``X-Min-Watermark``), which
        the caller has seen the process's watermark reach.

        The indexer publishes a watermark only once Elasticsearch acknowledged every write
        up to it, so a refresh that began when the process's watermark was W made every
        write up to W searchable. A request whose ``watermark`` is at most the W of the last
        completed refresh of the index therefore needs none: asking again for watermarks
        already reached costs nothing. Otherwise the request joins a refresh in flight that
        began at the current watermark, or starts one.
        """
        if watermark <= self._refreshed.get(kind, -1):
            return
        current = self._watermark.value if self._watermark is not None else None
        # Without a watermark at or past the one asked for, a refresh proves nothing beyond
        # this request: it is shared by the requests asking the same, and not remembered.
        proves = current is not None and current >= watermark
        began = current if proves and current is not None else watermark

        async def run() -> None:
            await self._call("refresh", self.client.indices.refresh(index=self.alias(kind)))
            if proves and began > self._refreshed.get(kind, -1):
                self._refreshed[kind] = began

        await self._refreshes.do((kind, began, proves), run)

    @elasticsearch_boundary
    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:  # any failure means "not reachable" for a readiness probe
            return False

    async def _whole(
        self, operation: str, request: Callable[[], Any]
    ) -> ObjectApiResponse[Any] | ApiResponse[Any]:
        """A search or count sent once more, at once, when some shard failed it: the failure
        is nearly always a copy on a node just lost, and the coordinating node routes the
        second request to the other copies. A second partial answer is a 503."""
        try:
            return await self._call(operation, request())
        except PartialAnswer as partial:
            log.info("partial answer, asking once more: %s", partial)
            return await self._call(operation, request())

    async def _call(
        self, operation: str, request: Any
    ) -> ObjectApiResponse[Any] | ApiResponse[Any]:
        if not self.gate.should_try():
            request.close()  # never sent: the node failed a moment ago
            raise SearchUnavailable("elasticsearch: unavailable (failed recently)")
        self.requests[operation] += 1
        try:
            response: ObjectApiResponse[Any] = await request
        except Exception as error:
            translated = classify_elasticsearch(error)
            if translated is None:
                raise
            # Only an outage marks the node down: a refused request says it is up.
            if isinstance(translated, StoreUnavailable):
                self.gate.failed(translated)
            else:
                self.gate.succeeded()
            raise translated from error
        self.gate.succeeded()
        _refuse_partial(operation, response)
        return response


def _refuse_partial(operation: str, response: ObjectApiResponse[Any] | ApiResponse[Any]) -> None:
    """A search, count or refresh that some shard failed (its node lost, its copies being
    promoted) answers 200 with fewer hits, a lower total or fewer copies refreshed: served,
    that would be a list missing objects or a stale read-your-writes. It is an outage of
    this request instead (503, retried by the client); the cluster itself is up."""
    body = response.body
    shards = body.get("_shards") if isinstance(body, dict) else None
    if isinstance(shards, dict) and shards.get("failed", 0):
        failures = shards.get("failures") or [{}]
        reason = failures[0].get("reason") if isinstance(failures[0], dict) else None
        cause = reason.get("type") if isinstance(reason, dict) else reason
        raise PartialAnswer(
            f"elasticsearch: {operation} failed on {shards['failed']} of "
            f"{shards.get('total', '?')} shards ({cause})"
        )


class PartialAnswer(SearchUnavailable):
    """Elasticsearch answered, but some shard did not: never served as the whole answer."""
