"""Lists from Elasticsearch: vouchers, customers, a customer's vouchers and segments. (A
segment's member count is a counter in Redis: ``readapi.events.MembershipReader.count``.)

Parameters, queries, sort and cursors come from ``readapi.search_query`` and
``readapi.cursor`` (``cursor_secret``: the ``LOYALTY_CURSOR_SECRET`` text, one secret or
several); every query is filtered by the caller's project. Searches see what the last index
refresh made visible; a request that waited for ``X-Min-Watermark`` has the index refreshed
first unless a refresh that began at or after that watermark already completed
(``SearchReader.refresh``), so it reads its own writes.
"""

from __future__ import annotations

from typing import Any

import orjson

from cache.readmodel.indices import Field
from cache.types import ObjectKind
from readapi.elastic import SearchReader
from readapi.search_query import (
    ListParams,
    build_search,
    decode_starting_after,
    encode_next_cursor,
    page_from_response,
)


class ListReader:
    def __init__(self, search: SearchReader, cursor_secret: str) -> None:
        self._search = search
        self._secret = cursor_secret

    async def page(self, params: ListParams, project_id: str, *, fresh_at: int | None) -> bytes:
        """The list answer of one page (``fresh_at``: the watermark waited for, if any)."""
        after = decode_starting_after(params, project_id, self._secret)
        body = build_search(params.kind, params, project_id, after=after)
        kind = params.kind.object_kind
        if fresh_at is not None:
            await self._search.refresh(kind, fresh_at)
        response = await self._search.search(
            kind,
            query=body["query"],
            sort=body["sort"],
            size=body["size"],
            track_total_hits=body["track_total_hits"],
            source=body["_source"],
            search_after=body.get("search_after"),
        )
        page = page_from_response(response, params.limit)
        ref = params.kind.data_ref
        return orjson.dumps({
            "object": "list",
            "data_ref": ref,
            ref: page.docs,
            "total": page.total,
            "has_more": page.has_more,
            "next_cursor": encode_next_cursor(params, project_id, page.next_sort_key,
                                              self._secret),
        })

    async def customer_segments(self, project_id: str, customer_id: str) -> bytes | None:
        """``{"object":"list","data_ref":"data","data":[...],"total"}``; None: no customer.

        Realtime GETs only (the customer's ``segment_ids``, then the segments' names), so
        the answer needs no refresh to be as fresh as the watermark."""
        customer = await self._search.get(
            ObjectKind.CUSTOMER, customer_id, fields=(Field.PROJECT_ID, Field.SEGMENT_IDS)
        )
        if customer is None or customer.source.get(Field.PROJECT_ID) != project_id:
            return None
        ids = customer.source.get(Field.SEGMENT_IDS) or []
        segments = await self._search.mget(
            ObjectKind.SEGMENT,
            [i for i in ids if isinstance(i, str)],
            (Field.PROJECT_ID, Field.NAME),
        )
        data: list[dict[str, Any]] = [
            {"id": found.object_id, "name": found.source.get(Field.NAME), "object": "segment"}
            for found in segments
            if found.source.get(Field.PROJECT_ID) == project_id
        ]
        return orjson.dumps(
            {"object": "list", "data_ref": "data", "data": data, "total": len(data)}
        )
