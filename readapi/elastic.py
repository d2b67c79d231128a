"""Elasticsearch reads of the read API: realtime GETs, term look-ups, counts and searches.

Index aliases are ``<prefix><kind>s`` (``loyalty_vouchers``); ``_source`` is
``{"id", "project_id", "doc": <API object>, <indexed fields>}`` and ``_version`` is the commit
LSN of the document. Every driver error is translated here into ``SearchUnavailable`` (the
node cannot answer: 503) or ``SearchRejected`` (it refused the query: 400), so handlers never
see an ``elasticsearch`` exception. Every call of a request is one counted ES request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import elasticsearch
from elastic_transport import ApiResponse, ObjectApiResponse
from elasticsearch import AsyncElasticsearch

from cache.singleflight import SingleFlight
from readapi.dependency import DependencyGate


class SearchUnavailable(Exception):
    """Elasticsearch could not answer (down, timing out, overloaded, index missing)."""


class SearchRejected(Exception):
    """Elasticsearch refused the request as malformed (HTTP 400)."""


def index_alias(prefix: str, kind: str) -> str:
    """The alias the indexer maintains for one object kind: ``<prefix><kind>s``."""
    return f"{prefix}{kind}s"


@dataclass(frozen=True, slots=True)
class FoundDocument:
    object_id: str
    version: int
    source: dict[str, Any]


class SearchReader:
    def __init__(self, client: AsyncElasticsearch, prefix: str, gate: DependencyGate) -> None:
        self.client = client
        self.prefix = prefix
        self.gate = gate
        # Requests sent, per operation: read by metrics and by tests counting requests.
        self.requests: Counter[str] = Counter()
        self._refreshes: SingleFlight[tuple[str, int], None] = SingleFlight()

    def alias(self, kind: str) -> str:
        return index_alias(self.prefix, kind)

    async def get(
        self, kind: str, object_id: str, fields: Sequence[str] = ("project_id", "doc")
    ) -> FoundDocument | None:
        """Realtime GET: sees every write Elasticsearch acknowledged, refreshed or not."""
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

    async def find_one(
        self, kind: str, project_id: str, field: str, value: str
    ) -> tuple[str, int] | None:
        """(id, version) of the document of ``project_id`` whose keyword ``field`` equals
        ``value`` (a search: it sees the last refresh, not later writes)."""
        response = await self._call(
            "search",
            self.client.search(
                index=self.alias(kind),
                query={"bool": {"filter": [
                    {"term": {"project_id": project_id}},
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

    async def count(self, kind: str, query: Mapping[str, Any]) -> int:
        response = await self._call(
            "count", self.client.count(index=self.alias(kind), query=dict(query))
        )
        return int(response.body["count"])

    async def search(self, kind: str, **params: Any) -> dict[str, Any]:
        response = await self._call(
            "search", self.client.search(index=self.alias(kind), **params)
        )
        body: dict[str, Any] = response.body
        return body

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

    async def refresh(self, kind: str, watermark: int) -> None:
        """Make every acknowledged write searchable (for requests with ``X-Min-Watermark``).

        Requests asking at one watermark share one refresh; one that arrives when the
        watermark moved on starts its own, since the earlier one may predate its write.
        """

        async def run() -> None:
            await self._call("refresh", self.client.indices.refresh(index=self.alias(kind)))

        await self._refreshes.do((kind, watermark), run)

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:  # any failure means "not reachable" for a readiness probe
            return False

    async def _call(
        self, operation: str, request: Any
    ) -> ObjectApiResponse[Any] | ApiResponse[Any]:
        if not self.gate.should_try():
            request.close()  # never sent: the node failed a moment ago
            raise SearchUnavailable("elasticsearch: unavailable (failed recently)")
        self.requests[operation] += 1
        try:
            response: ObjectApiResponse[Any] = await request
        except elasticsearch.BadRequestError as error:
            self.gate.succeeded()
            raise SearchRejected(str(error.message)) from error
        except (elasticsearch.ApiError, elasticsearch.TransportError, OSError) as error:
            self.gate.failed(error)
            raise SearchUnavailable(f"elasticsearch: {error}") from error
        except TimeoutError as error:
            self.gate.failed(error)
            raise SearchUnavailable("elasticsearch: timed out") from error
        self.gate.succeeded()
        return response
